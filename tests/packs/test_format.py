"""Selector packs: round trip, base-model checks, corrupt files, Hub cache offline."""

import json

import huggingface_hub
import pytest
import torch

import alvts
from alvts import SelectorConfig, SelectorPack
from alvts.packs import CONFIG_NAME, WEIGHTS_NAME, model_fingerprint
from alvts.policies import LowRankSelector
from alvts.testing import tiny_inputs, tiny_model


def _pack_for(model, rank=4, layers=(0, 1, 2, 3), rotary=False, heads=1):
    gen = torch.Generator().manual_seed(0)
    dim = model.config.text_config.hidden_size
    frequencies = {i: torch.randint(0, 8, (rank // 2,), generator=gen) for i in layers} if rotary else None
    selector = LowRankSelector(
        {i: torch.randn(dim, 2 * rank, generator=gen) for i in layers},
        {i: torch.tensor(0.5) for i in layers},
        frequencies=frequencies,
        heads=heads,
    )
    name = model.config._name_or_path or type(model).__name__
    config = SelectorConfig(
        base_model=name, fingerprint=model_fingerprint(model), rank=rank, layers=list(layers), default_keep=0.25,
        score_form=selector.form, selector_heads=heads,
    )  # fmt: skip
    return SelectorPack(config, selector)


@pytest.fixture
def llava():
    model = tiny_model("llava", "sdpa")
    model.config._name_or_path = "tiny/llava-a"
    return model


def test_round_trip_and_apply_from_a_folder(llava, tmp_path):
    pack = _pack_for(llava, layers=(1, 2, 3))
    pack.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {CONFIG_NAME, WEIGHTS_NAME, "README.md"}
    card = (tmp_path / "README.md").read_text()
    assert "base_model: tiny/llava-a" in card and "library_name: alvts" in card
    loaded = SelectorPack.from_pretrained(tmp_path)
    assert loaded.config == pack.config
    for i in (1, 2, 3):
        assert torch.equal(loaded.selector.factors[i], pack.selector.factors[i])
    batch = tiny_inputs(llava)
    with alvts.routed(llava, str(tmp_path)), torch.no_grad():  # default keep from the pack; layer 0 has no factors
        llava(**batch)
        kept = alvts.routing_state(llava).visual_kept()
    assert kept[0].tolist() == [64, 64] and kept[1:].eq(16).all()


def test_a_rotary_pack_keeps_its_frequencies_and_routes_as_saved(llava, tmp_path):
    pack = _pack_for(llava, rotary=True)
    pack.save_pretrained(tmp_path)
    loaded = SelectorPack.from_pretrained(tmp_path)
    assert loaded.config.score_form == "rotary" and loaded.selector.form == "rotary"
    for i in range(4):
        assert torch.equal(loaded.selector.frequencies[i], pack.selector.frequencies[i])
    batch = tiny_inputs(llava)
    chosen = []
    for selector in (pack.selector, loaded.selector):
        with alvts.routed(llava, selector, keep=0.25), torch.no_grad():
            chosen.append(llava(**batch).logits)
    assert torch.equal(chosen[0], chosen[1])


def test_a_pack_with_selector_heads_keeps_them_and_routes_as_saved(llava, tmp_path):
    pack = _pack_for(llava, rank=8, rotary=True, heads=2)
    pack.save_pretrained(tmp_path)
    loaded = SelectorPack.from_pretrained(tmp_path)
    assert loaded.config.selector_heads == 2 and loaded.selector.heads == 2
    batch = tiny_inputs(llava)
    logits = []
    for selector in (
        pack.selector,
        loaded.selector,
        LowRankSelector(pack.selector.factors, frequencies=pack.selector.frequencies),
    ):
        with alvts.routed(llava, selector, keep=0.25), torch.no_grad():
            logits.append(llava(**batch).logits)
    assert torch.equal(logits[0], logits[1]) and not torch.equal(logits[0], logits[2])


def test_a_rotary_config_without_frequencies_is_refused_on_load(llava, tmp_path):
    _pack_for(llava).save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "score_form": "rotary"}))
    with pytest.raises(ValueError, match=r"layer 0 needs integer frequencies of shape \(2,\) for the rotary form"):
        SelectorPack.from_pretrained(tmp_path)


def test_pack_for_another_model_is_refused_naming_both(llava, tmp_path):
    other = tiny_model("llava", "sdpa", seed=1)
    other.config._name_or_path = "tiny/llava-b"
    _pack_for(llava).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"fitted on 'tiny/llava-a' and does not fit 'tiny/llava-b': qk_norm_sha256"):
        alvts.apply(other, str(tmp_path))
    assert alvts.get_router(other) is None


def test_truncated_or_tampered_weights_are_refused(llava, tmp_path):
    _pack_for(llava).save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or was modified after saving"):
        SelectorPack.from_pretrained(tmp_path)
    weights.write_bytes(data[:-8] + bytes(8))
    with pytest.raises(ValueError, match="truncated or was modified after saving"):
        SelectorPack.from_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["weights_sha256"] = None  # without a checksum, safetensors itself must refuse the truncated file
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        SelectorPack.from_pretrained(tmp_path)


def test_newer_format_is_refused_and_unknown_keys_are_ignored(llava, tmp_path, caplog):
    _pack_for(llava).save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(dict(config, future_option=3)))
    assert SelectorPack.from_pretrained(tmp_path).config.rank == 4
    assert "future_option" in caplog.text
    (tmp_path / CONFIG_NAME).write_text(json.dumps(dict(config, format_version=99)))
    with pytest.raises(ValueError, match="format version 99.*Upgrade alvts"):
        SelectorPack.from_pretrained(tmp_path)


def test_from_pretrained_reads_a_populated_hub_cache_offline(llava, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-pack"
    _pack_for(llava).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    pack = SelectorPack.from_pretrained("someone/tiny-pack")
    assert pack.config.base_model == "tiny/llava-a"
    with pytest.raises(ValueError, match="'someone/not-cached' is not a local folder and not in the HF cache, and HF_"):
        SelectorPack.from_pretrained("someone/not-cached")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(rank=8), r"layer 0's factors have shape \(64, 8\), but selector_config.json says rank 8"),
        (dict(layers=[0, 1, 2, 3, 4]), r"has no factors for layers \[4\]"),
        (dict(layers=[0, 1]), r"holds factors for layers \[2, 3\] that selector_config.json does not list"),
        (dict(fingerprint={"hidden_size": 32}), r"hidden size 32 \(expected \(32, 8\)\)"),
        (
            dict(selector_heads=3),
            r"says rank 4 with 3 selector heads in the merged form; the rank must be a multiple of 3",
        ),
    ],
)
def test_a_config_that_does_not_match_its_tensors_is_refused_on_load(llava, tmp_path, change, message):
    _pack_for(llava).save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        SelectorPack.from_pretrained(tmp_path)


def test_an_id_that_is_nowhere_gets_one_download_attempt(monkeypatch):
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ValueError, match=r"'org/pack' is not a local folder or in the HF cache, and downloading it"):
        SelectorPack.from_pretrained("org/pack")
    assert calls == [True, False]  # the cache, then the Hub once


def test_a_loaded_pack_describes_itself_and_fingerprints_a_model_once(llava, tmp_path, monkeypatch):
    _pack_for(llava).save_pretrained(tmp_path)
    pack = SelectorPack.from_pretrained(tmp_path)
    described = pack.describe()
    assert described["source"] == str(tmp_path) and described["rank"] == 4 and described["layers"] == [0, 1, 2, 3]
    assert described["fingerprint"] == model_fingerprint(llava)["qk_norm_sha256"]
    import alvts.packs.format as pack_format

    counted = []
    monkeypatch.setattr(pack_format, "model_fingerprint", lambda m: counted.append(m) or model_fingerprint(m))
    for _ in range(3):
        pack.check_model(llava)
    assert len(counted) == 1


def test_saving_equal_tensors_writes_identical_bytes(llava, tmp_path):
    """Sixteen saves of one pack give one set of bytes (weights and config, whose sha256 covers the weights): packs
    compare with cmp, and a recalibration that changes nothing changes no file."""
    pack = _pack_for(llava)
    folders = [pack.save_pretrained(tmp_path / str(i)) for i in range(16)]
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        assert len({(folder / name).read_bytes() for folder in folders}) == 1
