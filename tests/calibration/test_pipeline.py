"""Calibration end to end on tiny models of every family; interrupted runs resume to the same pack."""

import pytest
import torch
from safetensors.torch import load_file

import alvts
import alvts.calibration.pipeline as calibration
from alvts import SelectorPack
from alvts.calibration import CalibrationConfig, calibrate
from alvts.calibration.fit import merged_bilinear_form
from alvts.routing import get_adapter
from alvts.testing import DEFAULT_IMAGES, tiny_inputs, tiny_model

FAST = CalibrationConfig(rank=8, stage_b_steps=10)


def _samples(model, n=5):
    image = DEFAULT_IMAGES[model.config.model_type][0]
    return [tiny_inputs(model, [[image]], seed=s) for s in range(n)]


def test_calibrate_save_reload_apply_generate(family, tmp_path):
    model = tiny_model(family, "sdpa")
    pack = calibrate(model, _samples(model), FAST, output_dir=tmp_path)
    assert pack.config.layers == [0, 1, 2, 3] and pack.config.rank == 8
    assert {"A_recall@0.111", "AB_recall@0.111", "AB_spearman", "AB_l2"} <= set(pack.config.metrics["3"])
    reloaded = SelectorPack.from_pretrained(tmp_path)
    batch = tiny_inputs(model)
    with alvts.routed(model, reloaded, keep=0.25), torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
        n = alvts.routing_state(model).visual.sum(1)
        assert (alvts.routing_state(model).visual_kept() == (n * 0.25 + 1e-6).floor().long()).all()
    assert out.shape[1] == batch["input_ids"].shape[1] + 3


class _Progress:
    """Stands in for tqdm: records the bar's final total, its updates and the messages written beside it."""

    messages: list[str] = []

    def __init__(self, total=None, **kwargs):
        self.total, self.updates = total, 0
        type(self).last = self

    def update(self, n=1):
        self.updates += n

    def set_description(self, *a):
        pass

    set_postfix_str = close = set_description

    @classmethod
    def write(cls, message):
        cls.messages.append(message)


def _record_progress(monkeypatch):
    monkeypatch.setattr(_Progress, "messages", [])
    monkeypatch.setattr(calibration, "tqdm", _Progress)

    class View:
        messages = property(lambda self: _Progress.messages)
        total = property(lambda self: _Progress.last.total)
        updates = property(lambda self: _Progress.last.updates)

    return View()


def test_the_progress_bar_moves_inside_every_layer(monkeypatch):
    model = tiny_model("llava", "sdpa")
    bars = _record_progress(monkeypatch)
    calibrate(model, _samples(model, 4), FAST)
    n, steps = 4, FAST.stage_b_steps  # per layer: n statistics, `steps` refinement steps; n advances per layer 0-2
    assert bars.total == n + 4 * (n + steps) + 3 * n and bars.updates == bars.total
    assert bars.messages == []


def test_interrupted_calibration_resumes_to_identical_tensors(tmp_path, monkeypatch):
    model = tiny_model("llava", "sdpa")
    samples = _samples(model)
    calibrate(model, samples, FAST, output_dir=tmp_path / "straight")

    fit_layer, fitted = calibration._fit_layer, []

    def crash_at_layer_2(i, *args):
        if i == 2:
            raise KeyboardInterrupt
        fitted.append(i)
        return fit_layer(i, *args)

    monkeypatch.setattr(calibration, "_fit_layer", crash_at_layer_2)
    with pytest.raises(KeyboardInterrupt):
        calibrate(model, samples, FAST, output_dir=tmp_path / "resumed")
    monkeypatch.setattr(calibration, "_fit_layer", lambda i, *args: fitted.append(i) or fit_layer(i, *args))
    bars = _record_progress(monkeypatch)
    calibrate(model, samples, FAST, output_dir=tmp_path / "resumed")
    assert fitted == [0, 1, 2, 3]  # layers 0 and 1 were not fitted again
    assert f"Resuming: layers 0-1 reused from {tmp_path / 'resumed' / 'layers'}" in bars.messages
    # the bar counts what is left: captures, statistics and refinement of layers 2-3, advancing through layers 0-2
    n, steps = len(samples), FAST.stage_b_steps
    assert bars.total == n + 2 * (n + steps) + 3 * n and bars.updates == bars.total
    straight = load_file(tmp_path / "straight" / "selectors.safetensors")
    resumed = load_file(tmp_path / "resumed" / "selectors.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_with_other_settings_or_data_is_refused(tmp_path):
    model = tiny_model("llava", "sdpa")
    data = {"name": "alvts-tasks", "split": "train", "num_samples": 3}
    calibrate(model, _samples(model, 3), FAST, output_dir=tmp_path, dataset_info=data)
    with pytest.raises(ValueError, match="holds a calibration run with other settings, model or data"):
        calibrate(model, _samples(model, 3), CalibrationConfig(rank=4, stage_b_steps=10), output_dir=tmp_path)
    with pytest.raises(ValueError, match="holds a calibration run with other settings, model or data"):
        calibrate(model, _samples(model, 3), FAST, output_dir=tmp_path, dataset_info={**data, "split": "test"})


def test_samples_without_an_image_are_refused():
    model = tiny_model("llava", "sdpa")
    with pytest.raises(ValueError, match="needs an image"):
        calibrate(model, [tiny_inputs(model, [[]])] * 2, FAST)


def test_svd_init_is_the_data_free_truncated_svd_of_the_merged_form():
    model = tiny_model("llava", "sdpa")
    config = CalibrationConfig(rank=4, layers=[1], stage_b_steps=0, init="svd", form="merged")
    pack = calibrate(model, _samples(model, 3), config)
    adapter = get_adapter(model)
    attention = adapter.attention(adapter.decoder_layers(model)[1])
    u, s, vh = torch.linalg.svd(merged_bilinear_form(attention))
    expected = (u[:, :4] * s[:4]) @ vh[:4]
    pq, pk = pack.selector.factors[1].double().chunk(2, dim=1)
    assert torch.allclose(pq @ pk.T, expected, atol=1e-5)
    merged = CalibrationConfig(rank=4, layers=[1], stage_b_steps=0, form="merged")
    whitened = calibrate(model, _samples(model, 3), merged)
    assert not torch.allclose(whitened.selector.factors[1], pack.selector.factors[1])


def test_t2v_score_is_fitted_saved_and_routed(tmp_path):
    model = tiny_model("qwen2_5_vl", "sdpa")
    samples = _samples(model, 4)
    product = calibrate(model, samples, CalibrationConfig(rank=4, layers=[1], stage_b_steps=10))
    t2v = calibrate(model, samples, CalibrationConfig(rank=4, layers=[1], stage_b_steps=10, score="t2v"), tmp_path)
    reloaded = SelectorPack.from_pretrained(tmp_path)
    assert reloaded.config.score == reloaded.selector.score == "t2v" and product.selector.score == "v2v*t2v"
    # Stage A does not look at the target; its held-out agreement is measured against the score asked for
    assert t2v.config.metrics["1"]["A_spearman"] != product.config.metrics["1"]["A_spearman"]
    with alvts.routed(model, reloaded, keep=[1.0, 0.25, 1.0, 1.0]), torch.no_grad():
        model(**tiny_inputs(model))
        state = alvts.routing_state(model)
        assert (state.selected[1] & state.visual).sum(1).tolist() == (state.visual.sum(1) // 4).tolist()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(init="random"), "init must be one of 'whitened', 'svd', got 'random'"),
        (dict(score="v2v+t2v"), r"score must be one of 'v2v\*t2v', 't2v', 'v2v', got 'v2v\+t2v'"),
        (dict(rank=0), "rank must be an integer >= 1, got 0"),
        (dict(rank=2.5), "rank must be an integer >= 1, got 2.5"),
        (dict(default_keep=0), r"default_keep must be a number in \(0, 1\], got 0"),
        (dict(loss="l1"), r"loss must be one of 'mse\+kl', 'mse', got 'l1'"),
        (dict(layers=[-1]), r"layers must be a list of integers >= 0, got \[-1\]"),
        (dict(held_out_fraction=0.9), r"held_out_fraction must be a number in \(0, 0.5\], got 0.9"),
        (
            dict(rank=5),
            r"rank 5 does not split into 1 selector head\(s\) of even size .*; use a rank divisible by 2, or "
            "form 'merged'",
        ),
        (dict(rank=12, heads=4), r"rank 12 does not split into 4 selector head\(s\) of even size .*divisible by 8"),
        (
            dict(rank=6, heads=4, form="merged"),
            r"rank 6 does not split into 4 selector head\(s\); use a rank divisible by 4",
        ),
        (dict(heads=0), "heads must be an integer >= 1, got 0"),
        (dict(form="rope"), r"form must be one of 'rotary', 'merged', got 'rope'"),
    ],
)
def test_the_config_refuses_bad_settings_when_made(settings, message):
    with pytest.raises(ValueError, match="CalibrationConfig: " + message):
        CalibrationConfig(**settings)


def test_layers_out_of_range_are_refused_before_model_work(monkeypatch):
    model = tiny_model("llava", "sdpa")
    monkeypatch.setattr(calibration, "capture_layer_inputs", lambda *a, **k: pytest.fail("ran the model"))
    with pytest.raises(ValueError, match=r"out of range: the model has decoder layers 0-3"):
        calibrate(model, _samples(model, 2), CalibrationConfig(layers=[7]))


def test_selector_heads_that_do_not_split_the_models_heads_are_refused_before_model_work(monkeypatch):
    model = tiny_model("llava", "sdpa")
    monkeypatch.setattr(calibration, "capture_layer_inputs", lambda *a, **k: pytest.fail("ran the model"))
    with pytest.raises(ValueError, match=r"3 selector heads do not split the model's 4 attention heads evenly; pass"):
        calibrate(model, _samples(model, 2), CalibrationConfig(rank=6, heads=3))
