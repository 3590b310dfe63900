"""A routed run's settings, read through vLLM's own means, and every check that can be made before any model work.

Settings come from `hf_overrides={"alvts": {...}}` (`--hf-overrides` on the command line) or from
`additional_config={"alvts": {...}}` (`--additional-config`), not both:

    pack            folder or Hub id of a selector pack (its fitted selector scores the layers it covers)
    policy          a registered policy that reads only the layer input: "full" or "random" (instead of a pack)
    policy_options  the policy's options, e.g. {"seed": 3}
    keep            ratio in (0, 1], or one per decoder layer (k = max(1, floor(keep * N)) of a request's N)
    keep_tokens     a count, or one per decoder layer, instead of keep
    always_gather   route every layer through gather, scatter and its own attention metadata, even one that keeps
                    every token (a check that the routed path reproduces stock vLLM; slower)
    record          keep what each layer selected and each layer's KV length per request (tests, benchmarks)

`check_engine` runs inside vLLM's config construction (`VllmConfig.__post_init__`, in the process that builds the
engine), so a bad value or an unsupported engine option ends with one message before the engine starts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.config import VllmConfig

    from ...packs import SelectorPack
    from ...routing import KeepSchedule, Policy

logger = logging.getLogger(__name__)

CONFIG_KEY = "alvts"
# policies whose scores read only the layer input (hidden states, their input-normed form, the visual mask): vLLM
# fuses q/k/v into one sharded projection and runs its own rotary, which attention-based policies would need
SUPPORTED_POLICIES = ("full", "random")


class AlvtsConfigError(ValueError):
    """A routed vLLM run that cannot start: the message names the setting and the fix."""


@dataclass(frozen=True)
class RoutingConfig:
    """The `alvts` settings of one run (see the module docstring)."""

    pack: str | None = None
    policy: str | None = None
    policy_options: dict[str, Any] = field(default_factory=dict)
    keep: float | list[float] | None = None
    keep_tokens: int | list[int] | None = None
    always_gather: bool = False
    record: bool = False

    @classmethod
    def from_dict(cls, data: Any, source: str) -> RoutingConfig:
        """The settings in `data` (a JSON object from `source`), with unknown keys and wrong kinds refused."""
        if not isinstance(data, dict):
            raise AlvtsConfigError(f"alvts: {source} must be a JSON object of settings, got {data!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AlvtsConfigError(f"alvts: unknown setting(s) {unknown} in {source}; known: {sorted(known)}.")
        config = cls(**data)
        for name in ("always_gather", "record"):
            if not isinstance(getattr(config, name), bool):
                raise AlvtsConfigError(f"alvts: {name} must be true or false, got {getattr(config, name)!r}.")
        if not isinstance(config.policy_options, dict):
            raise AlvtsConfigError(f"alvts: policy_options must be an object, got {config.policy_options!r}.")
        return config

    @classmethod
    def from_vllm(cls, vllm_config: VllmConfig) -> RoutingConfig:
        """The settings in `hf_overrides` or `additional_config`; an error when both or neither hold them."""
        from_hf = getattr(vllm_config.model_config.hf_config, CONFIG_KEY, None)
        from_additional = (vllm_config.additional_config or {}).get(CONFIG_KEY)
        if from_hf is not None and from_additional is not None:
            raise AlvtsConfigError(
                "alvts: settings given both in hf_overrides['alvts'] and additional_config['alvts']; give them once."
            )
        if from_hf is None and from_additional is None:
            raise AlvtsConfigError(
                f"alvts: the routed architecture {vllm_config.model_config.architecture!r} needs its settings: pass "
                'hf_overrides={"architectures": [...], "alvts": {"pack": PATH, "keep": 0.11}} (or {"policy": '
                '"random", "keep": 0.25}), or additional_config={"alvts": {...}}.'
            )
        if from_hf is not None:
            return cls.from_dict(from_hf, "hf_overrides['alvts']")
        return cls.from_dict(from_additional, "additional_config['alvts']")


@dataclass
class ResolvedRouting:
    """What routes a run: the policy, its per-layer schedule, and the pack it came from (if any)."""

    config: RoutingConfig
    policy: Policy
    schedule: KeepSchedule
    pack: SelectorPack | None


def text_config(hf_config: Any) -> Any:
    """The language model's config inside a multimodal config."""
    return hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config


def resolve(config: RoutingConfig, hf_config: Any) -> ResolvedRouting:
    """The policy and schedule for a model config; raises AlvtsConfigError naming what is wrong. A pack is loaded
    and its fingerprint's shapes and ids checked against `hf_config` (its weights are checked after loading)."""
    from ...api import plan_budget
    from ...packs import SelectorPack
    from ...policies import build_policy

    num_layers = text_config(hf_config).num_hidden_layers
    pack = None
    if (config.pack is None) == (config.policy is None):
        raise AlvtsConfigError(
            "alvts: give exactly one of pack (a selector pack's folder or Hub id) or policy "
            f"(one of {list(SUPPORTED_POLICIES)}); got pack={config.pack!r}, policy={config.policy!r}."
        )
    if config.pack is not None:
        if config.policy_options:
            raise AlvtsConfigError("alvts: policy_options apply to a policy, not to a pack.")
        try:
            pack = SelectorPack.from_pretrained(config.pack)
        except (ValueError, OSError) as err:
            raise AlvtsConfigError(f"alvts: cannot load the selector pack {config.pack!r}: {err}") from None
        check_pack_config(pack, hf_config)
        policy = pack.selector
    else:
        if config.policy not in SUPPORTED_POLICIES:
            raise AlvtsConfigError(
                f"alvts in vLLM routes with a selector pack or a policy in {list(SUPPORTED_POLICIES)}, got "
                f"{config.policy!r}: attention-based policies need the layer's own q/k projections, which vLLM fuses "
                "and shards. Use a pack (alvts-calibrate) or alvts in transformers."
            )
        try:
            policy = build_policy(config.policy, config.policy_options)
        except ValueError as err:
            raise AlvtsConfigError(f"alvts: {err}") from None
    keep = config.keep if not isinstance(config.keep, Sequence) else list(config.keep)
    try:
        schedule = plan_budget(policy, num_layers, keep, config.keep_tokens)
    except (ValueError, TypeError) as err:
        raise AlvtsConfigError(f"alvts: {err}") from None
    return ResolvedRouting(config, policy, schedule, pack)


def check_pack_config(pack: SelectorPack, hf_config: Any) -> None:
    """The pack's fingerprint fields that a config decides (family, layers, width, image token) must match."""
    text = text_config(hf_config)
    ours = {
        "model_type": hf_config.model_type,
        "num_layers": text.num_hidden_layers,
        "hidden_size": text.hidden_size,
        "image_token_id": getattr(hf_config, "image_token_id", None),
    }
    theirs = pack.config.fingerprint
    differ = sorted(k for k, v in ours.items() if k in theirs and theirs[k] != v)
    if differ:
        detail = ", ".join(f"{k}: pack {theirs[k]!r}, model {ours[k]!r}" for k in differ)
        raise AlvtsConfigError(
            f"alvts: the selector pack {pack.source!r} was fitted on {pack.config.base_model!r} and does not fit this "
            f"model ({detail}). Use a pack fitted on this model (alvts-calibrate)."
        )


def check_engine(vllm_config: VllmConfig) -> ResolvedRouting:
    """Every check of a routed run that needs no weights: the engine options routing cannot work with, then the
    alvts settings. Raises AlvtsConfigError with the fix."""
    problems = []
    if not vllm_config.model_config.enforce_eager:
        problems.append(
            "enforce_eager=True (--enforce-eager): routed layers build attention metadata per step on the host, "
            "which CUDA graphs and torch.compile would freeze"
        )
    if vllm_config.cache_config.enable_prefix_caching:
        problems.append(
            "enable_prefix_caching=False (--no-enable-prefix-caching): a cached block holds every token at every "
            "layer, a routed layer's KV holds only what went through it"
        )
    if vllm_config.scheduler_config.enable_chunked_prefill:
        problems.append(
            "enable_chunked_prefill=False (--no-enable-chunked-prefill): a layer selects a request's visual tokens "
            "from the whole prompt, including the text after the image, so the prompt must run in one step"
        )
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size > 1:
        problems.append("pipeline_parallel_size=1: pipeline parallel is not supported (tensor parallel is)")
    if parallel.decode_context_parallel_size > 1:
        problems.append("decode_context_parallel_size=1: decode context parallel is not supported")
    if getattr(parallel, "use_ubatching", False):
        problems.append("no micro-batching (enable_dbo=False, ubatch_size=1): one step's metadata is built per ubatch")
    if vllm_config.speculative_config is not None:
        problems.append("no speculative decoding: draft tokens would need per-layer KV lengths too")
    if problems:
        raise AlvtsConfigError(
            f"alvts: the routed architecture {vllm_config.model_config.architecture!r} needs "
            + "; ".join(problems)
            + "."
        )
    resolved = resolve(RoutingConfig.from_vllm(vllm_config), vllm_config.model_config.hf_config)
    logger.info(
        "alvts: routing with %s, visual tokens kept per layer: %s",
        resolved.pack.source if resolved.pack is not None else resolved.policy.name,
        list(resolved.schedule.ratios or resolved.schedule.counts),
    )
    return resolved


def install_config_checks(architectures: list[str]) -> None:
    """Run `check_engine` in vLLM's config construction for `architectures` (vLLM's per-architecture config hooks,
    `MODELS_CONFIG_MAP`). Where a vLLM release lacks that map, the model checks the same when it is built."""
    try:
        from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig
    except ImportError:  # pragma: no cover - depends on the vLLM release
        logger.warning("alvts: vLLM has no per-architecture config hooks; settings are checked at model build.")
        return

    class _CheckRouting(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_config(vllm_config: VllmConfig) -> None:
            check_engine(vllm_config)

    for name in architectures:
        MODELS_CONFIG_MAP.setdefault(name, _CheckRouting)
