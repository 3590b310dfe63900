#!/usr/bin/env bash
# One prepared device call for the GPU-performance issue: CUDA tests, then the benchmark tables, JSON under $OUT.
# Not yet run on a device (written in a session without one): check the first stage's output before the rest.
#
# The device image (Python 3.12) has torch 2.11 and transformers 5.17 but no datasets, dill or multiprocess; alvts
# needs transformers 5.23. Before the call, on this machine (the folder is git-ignored; carry it), for Python 3.12
# whatever Python runs here (multiprocess has a wheel per Python version; the other needs are in the image):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl transformers==5.23.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# then call the device tool's run with carry [".whl"] and, e.g.,
#   bash benchmarks/device_session.sh tests prefill        (stages: tests prefill generate compiled calibration)
# Every stage prints its table last; what each stage costs on an H100 is a guess (7B random-weight builds ~30 s each).
set -uo pipefail
OUT="${OUT:-/tmp/alvts-device}"
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests prefill generate)
cd benchmarks
for stage in "${stages[@]}"; do
  case "$stage" in
    tests)  # bf16 parity, routed generate, static cache + compiled decoding on CUDA; the Triton kernel compiled
      (cd .. && python3 -m pytest -q tests/routing/test_cuda.py tests/routing/test_static_cache.py tests/routing/test_syncs.py \
        tests/kernels tests/routing/test_compile.py tests/routing/test_varlen_attention.py) \
        2>&1 | tee "$OUT/tests.log" | tail -5 ;;
    prefill)  # the four prefill shapes (fitted-selector cost stand-in: rank-32 lowrank policy)
      python3 prefill.py --preset qwen2.5-vl-7b --batch-sizes 1,8 --json "$OUT/prefill_qwen.json" | tail -4
      python3 prefill.py --preset qwen2.5-vl-7b-5184 --batch-sizes 1 --json "$OUT/prefill_qwen5184.json" | tail -3
      python3 prefill.py --preset llava-1.5-7b --batch-sizes 32 --json "$OUT/prefill_llava.json" | tail -3 ;;
    generate)  # stock dynamic cache: ttft, tpot, KV bytes, routed vs full vs ideal
      python3 generate.py --preset qwen2.5-vl-7b --batch-sizes 1,8 --json "$OUT/generate_qwen.json" | tail -8
      python3 generate.py --preset llava-1.5-7b --batch-sizes 32 --json "$OUT/generate_llava.json" | tail -5 ;;
    compiled)  # static cache, decoding compiled by generate(): the >= 2x end-to-end goal at 32 x 576
      python3 generate.py --preset llava-1.5-7b --batch-sizes 32 --cache static --compile --warmup 2 \
        --json "$OUT/generate_llava_compiled.json" | tail -5 ;;
    calibration)  # 256 samples on the 7B shapes, rank 32: the <= 5 min goal
      python3 calibration.py --preset qwen2.5-vl-7b --ranks 32 --num-samples 256 --device cuda \
        --json "$OUT/calibration_qwen7b.json" | tail -4 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
