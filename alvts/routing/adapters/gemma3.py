"""Gemma 3: refused. Its decoder interleaves sliding-window layers with global ones, and its prefill lets the tokens
of one image attend to each other in both directions; routed layers build plain causal masks over their gathered
tokens, so neither would be the stock attention (see `REASON`)."""

from . import refuse_family

REASON = (
    "Gemma 3 cannot be routed exactly. (1) Its sliding-window layers limit each query to keys within "
    "`sliding_window` *positions*; a routed layer gathers a subset of tokens, and alvts builds its mask from slot "
    "order (causal only), so the window would have to be rebuilt from the kept tokens' original positions, which the "
    "routing core does not do yet. (2) During prefill the tokens of one image attend to each other bidirectionally "
    "(token_type_ids); a routed layer's mask is causal, so even keep 1.0 would differ from the stock model. "
    "Supported model classes are listed by alvts.routing.adapters.supported_model_classes()."
)

refuse_family(("gemma3",), REASON)
