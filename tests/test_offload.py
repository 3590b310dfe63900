"""Models dispatched by accelerate (`from_pretrained(device_map=...)`) with offloaded decoder layers, whose weights sit
on the meta device until a hook loads them: calibration, the pack check and routing must give what the plain model
gives. On CPU, offloading to disk is the way to exercise the hooks that `device_map="auto"` installs on big models."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import alvts
from alvts.calibration import CalibrationConfig, calibrate
from alvts.routing import get_adapter
from alvts.testing import DEFAULT_IMAGES, tiny_inputs, tiny_model


def offload_odd_layers(model: nn.Module) -> dict[str, str]:
    """A device map with every odd decoder layer on "disk" and everything else on "cpu"."""
    layers = get_adapter(model).decoder_layers(model)
    device_map = {}

    def assign(module: nn.Module, name: str) -> None:
        if module is layers:
            device_map.update({f"{name}.{i}": "disk" if i % 2 else "cpu" for i in range(len(layers))})
        elif any(m is layers for m in module.modules()):
            own = [n for n, _ in module.named_parameters(recurse=False)] + [
                n for n, _ in module.named_buffers(recurse=False)
            ]
            device_map.update({f"{name}.{n}" if name else n: "cpu" for n in own})  # e.g. LLaVA-NeXT's image_newline
            for child_name, child in module.named_children():
                assign(child, f"{name}.{child_name}" if name else child_name)
        else:
            device_map[name] = "cpu"

    assign(model, "")
    return device_map


@pytest.fixture
def pair(family, tmp_path):
    """(plain model, the same weights loaded with odd decoder layers offloaded to disk)."""
    model = tiny_model(family, "sdpa")
    model.save_pretrained(tmp_path / "model")
    offloaded = (
        type(model)
        .from_pretrained(tmp_path / "model", device_map=offload_odd_layers(model), offload_folder=tmp_path / "offload")
        .eval()
    )
    assert get_adapter(offloaded).decoder_layers(offloaded)[1].self_attn.q_proj.weight.device.type == "meta"
    return model, offloaded


def test_calibrating_an_offloaded_model_gives_the_plain_models_pack(pair, tmp_path):
    model, offloaded = pair
    image = DEFAULT_IMAGES[model.config.model_type][0]
    samples = [tiny_inputs(model, [[image]], seed=s) for s in range(4)]
    config = CalibrationConfig(rank=8, stage_b_steps=5)
    plain = calibrate(model, samples, config, output_dir=tmp_path / "plain")
    dispatched = calibrate(offloaded, samples, config, output_dir=tmp_path / "dispatched")
    assert dispatched.config.fingerprint == plain.config.fingerprint
    a, b = (load_file(tmp_path / run / "selectors.safetensors") for run in ("plain", "dispatched"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key])
    # the offloaded weights went back to the meta device: calibration did not load the whole model
    assert get_adapter(offloaded).decoder_layers(offloaded)[1].self_attn.q_proj.weight.device.type == "meta"


def test_routed_generate_on_an_offloaded_model_matches_the_plain_model(pair):
    model, offloaded = pair
    image = DEFAULT_IMAGES[model.config.model_type][0]
    pack = calibrate(
        model, [tiny_inputs(model, [[image]], seed=s) for s in range(3)], CalibrationConfig(rank=8, stage_b_steps=5)
    )
    batch = tiny_inputs(model)
    outputs = []
    for m in (model, offloaded):
        with alvts.routed(m, pack, keep=0.25), torch.no_grad():
            outputs.append(m.generate(**batch, max_new_tokens=4, do_sample=False))
    assert torch.equal(outputs[0], outputs[1])
