"""Calibration and evaluation rows from local imagefolder / parquet / jsonl data and (stubbed) Hub streams, and the
checks that refuse unusable data with a message naming the fix."""

import json

import pytest
from datasets import Features, IterableDataset, Value
from datasets import Image as ImageFeature
from PIL import Image

import alvts.evaluation.data as data
from alvts.demo.tasks import TRAIN_SEED, build_dataset, export_dataset
from alvts.evaluation.data import DataError, load_calibration_rows, load_eval_rows


@pytest.fixture(scope="module")
def suite():
    return build_dataset(2, seed=TRAIN_SEED + 7)  # 10 rows, 2 per task


def _assert_rows(rows, n):
    assert len(rows) == n
    for image, text in rows:
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (448, 448)
        assert isinstance(text, str) and text.endswith("?")


def _jsonl(tmp_path, suite, records):
    """A jsonl file whose `img` column holds image paths relative to it, plus `records` fields per row."""
    (tmp_path / "imgs").mkdir()
    with open(tmp_path / "data.jsonl", "w") as f:
        for i, (row, record) in enumerate(zip(suite, records, strict=False)):
            row["image"].save(tmp_path / "imgs" / f"{i}.png")
            f.write(json.dumps({"img": f"imgs/{i}.png", "prompt": row["question"], **record}) + "\n")
    return tmp_path / "data.jsonl"


@pytest.mark.parametrize("fmt", ["imagefolder", "parquet"])
def test_exported_suite_loads_from_a_folder(suite, tmp_path, fmt):
    export_dataset(suite, tmp_path, fmt)
    rows = load_calibration_rows(str(tmp_path), num_samples=4)
    _assert_rows(rows, 4)
    assert {text for _, text in rows} <= set(suite["question"])


def test_parquet_file_takes_every_row_when_fewer_than_asked(suite, tmp_path):
    path = export_dataset(suite, tmp_path, "parquet")
    _assert_rows(load_calibration_rows(str(path), num_samples=100), len(suite))


def test_local_rows_are_a_seeded_shuffle(suite, tmp_path):
    export_dataset(suite, tmp_path, "parquet")
    order = [[text for _, text in load_calibration_rows(str(tmp_path), seed=s)] for s in (0, 0, 1)]
    assert order[0] == order[1] != order[2] and sorted(order[0]) == sorted(suite["question"])


def test_jsonl_image_paths_are_relative_to_the_file(suite, tmp_path, monkeypatch):
    path = _jsonl(tmp_path, suite, [{}] * 3)
    monkeypatch.chdir(tmp_path / "imgs")  # relative to the file, not to the working directory
    for source in (str(path), str(tmp_path)):
        rows = load_calibration_rows(source, image_column="img", text_column="prompt", num_samples=8)
        _assert_rows(rows, 3)


def test_missing_columns_are_named_with_the_flags_to_fix_them(suite, tmp_path):
    path = _jsonl(tmp_path, suite, [{}] * 3)
    with pytest.raises(DataError) as info:
        load_calibration_rows(str(path), num_samples=4)
    message = str(info.value)
    assert "no column 'image' or 'question'" in message and "['img', 'prompt']" in message
    assert "--image-column" in message and "--text-column" in message


@pytest.mark.parametrize("empty", [None, ""])
def test_rows_without_an_image_are_refused(suite, tmp_path, empty):
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"image": empty, "question": q}) + "\n" for q in suite["question"][:3])
    )
    with pytest.raises(DataError, match="Row 0 of .* has no image in column 'image'.*--image-column"):
        load_calibration_rows(str(tmp_path / "data.jsonl"))


def test_a_text_column_named_as_images_is_refused(suite, tmp_path):
    export_dataset(suite, tmp_path, "imagefolder")
    with pytest.raises(DataError, match="holds text that is no image file.*--image-column"):
        load_calibration_rows(str(tmp_path), image_column="answer")


def test_rows_without_a_prompt_are_refused(suite, tmp_path):
    path = _jsonl(tmp_path, suite, [{"n": 1}, {"n": 2}])
    with pytest.raises(DataError, match="no prompt text in column 'n' .*--text-column"):
        load_calibration_rows(str(path), image_column="img", text_column="n")


def test_unusable_local_sources_are_refused(suite, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        load_calibration_rows(str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="holds no images and no .jsonl"):
        load_calibration_rows(str(tmp_path))
    export_dataset(suite, tmp_path / "images", "imagefolder")
    with pytest.raises(DataError, match=r"no split 'validation'; pass --split with one of \['train'\]"):
        load_calibration_rows(str(tmp_path / "images"), split="validation")


def test_one_row_is_too_few(suite, tmp_path):
    export_dataset(suite.select([0]), tmp_path, "imagefolder")
    with pytest.raises(DataError, match="has 1 row.*at least 2"):
        load_calibration_rows(str(tmp_path))


def test_hub_datasets_are_streamed_and_only_the_first_rows_read(suite, monkeypatch):
    read = []

    def rows():
        for row in suite:
            read.append(row["question"])
            yield {"picture": row["image"], "instruction": row["question"], "extra": 1}

    features = Features({"picture": ImageFeature(), "instruction": Value("string"), "extra": Value("int64")})
    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return IterableDataset.from_generator(rows, features=features)

    monkeypatch.setattr(data, "load_dataset", fake_load_dataset)
    loaded = load_calibration_rows("org/images", "val", "picture", "instruction", num_samples=3)
    _assert_rows(loaded, 3)
    assert calls == [("org/images", {"split": "val", "streaming": True})]
    assert [text for _, text in loaded] == suite["question"][:3] and len(read) <= 4
    with pytest.raises(DataError, match=r"columns are \['picture', 'instruction', 'extra'\]"):
        load_calibration_rows("org/images", "val", num_samples=3)


def test_unreachable_hub_datasets_are_refused_with_what_was_tried(monkeypatch):
    def offline(name, **kwargs):
        raise ConnectionError(f"Couldn't reach {name!r} on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(data, "load_dataset", offline)
    with pytest.raises(DataError, match="not a local folder or file.*OfflineModeIsEnabled.*HF_HUB_OFFLINE"):
        load_calibration_rows("org/missing")


def test_eval_rows_from_local_data_keep_answers_and_tasks_and_filter_by_task(suite, tmp_path):
    records = [{"gold": row["answer"], "kind": row["task"]} for row in suite]
    path = _jsonl(tmp_path, suite, records)
    samples = load_eval_rows(str(path), image_column="img", text_column="prompt", answer_column="gold",
                             task_column="kind", num_samples=100)  # fmt: skip
    assert sorted((s.question, s.answer, s.task) for s in samples) == sorted(
        zip(suite["question"], suite["answer"], suite["task"], strict=True)
    )
    assert all(s.image.size == (448, 448) for s in samples)
    lookup = load_eval_rows(str(path), image_column="img", text_column="prompt", answer_column="gold",
                            task_column="kind", tasks=["lookup"])  # fmt: skip
    assert [s.task for s in lookup] == ["lookup"] * suite["task"].count("lookup")
    untasked = load_eval_rows(str(path), image_column="img", text_column="prompt", answer_column="gold")
    assert {s.task for s in untasked} == {"data"}  # no task column: one task named after the file
    with pytest.raises(DataError, match="no column 'answer'.*--answer-column"):
        load_eval_rows(str(path), image_column="img", text_column="prompt")
