"""lmms-eval integration: evaluate a routed model on any lmms-eval benchmark.

    python -m lmms_eval --model alvts --tasks mme \
        --model_args base=qwen2_5_vl,pretrained=Qwen/Qwen2.5-VL-7B-Instruct,pack=selectors/qwen2.5-vl-r32,keep=0.11

`pip install alvts` next to lmms-eval (>= 0.7, registry v2) is all it takes: pyproject.toml registers `manifest`
under the entry-point group "lmms_eval.models". The wrapper builds lmms-eval's own model class for `base` from the
remaining model_args, routes its transformers model (`alvts.apply` with `pack`, or a baseline `policy`, at `keep`)
and hands every request to it, so prompts, chat templates and answer parsing are exactly lmms-eval's for that base.
"""

from __future__ import annotations

from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from ..api import apply


def manifest() -> ModelManifest:
    """The entry point's payload: `--model alvts`, chat (lmms-eval's default) or simple (`--force_simple`)."""
    return ModelManifest(
        model_id="alvts", simple_class_path=f"{__name__}.RoutedSimpleLMM", chat_class_path=f"{__name__}.RoutedChatLMM"
    )


class RoutedSimpleLMM(lmms):
    """lmms-eval's model `base` (built from the other model_args) with its decoder routed by alvts."""

    is_simple = True

    def __init__(
        self,
        base: str = "qwen2_5_vl",
        pack: str | None = None,
        policy: str | None = None,
        keep: float | None = None,
        **base_args,
    ) -> None:
        if (pack is None) == (policy is None):
            raise ValueError(
                "--model alvts routes with a selector pack or a policy: add pack=PATH_OR_HUB_ID or policy=NAME "
                "(oracle, fastv, pdrop, v2drop, divprune, random, ...) to --model_args, not both."
            )
        from lmms_eval.models import get_model  # not at the top: lmms_eval.models imports this module while it loads

        base_class = get_model(base, force_simple=self.is_simple)
        if base_class.is_simple != self.is_simple:
            kind = "simple" if self.is_simple else "chat"
            raise ValueError(f"lmms-eval has no {kind} implementation of model {base!r}; run with the other kind.")
        self.base = base_class(**base_args)
        super().__init__()
        apply(self.base.model, pack if pack is not None else policy, keep=None if keep is None else float(keep))

    # What the evaluator sets on the model, and reads back, belongs to the base that answers the requests.
    @property
    def task_dict(self) -> dict:
        return self.base.task_dict

    @task_dict.setter
    def task_dict(self, value: dict) -> None:
        self.base.task_dict = value

    @property
    def cache_hook(self):
        return self.base.cache_hook

    @cache_hook.setter
    def cache_hook(self, value) -> None:
        self.base.cache_hook = value

    @property
    def rank(self) -> int:
        return self.base.rank

    @property
    def world_size(self) -> int:
        return self.base.world_size

    @property
    def model(self):
        return self.base.model

    def loglikelihood(self, requests):
        return self.base.loglikelihood(requests)

    def generate_until(self, requests):
        return self.base.generate_until(requests)

    def generate_until_multi_round(self, requests):
        return self.base.generate_until_multi_round(requests)


class RoutedChatLMM(RoutedSimpleLMM):
    """The chat-template kind (lmms-eval's default where the base has one)."""

    is_simple = False
