"""browse_dataset.py, dataset_report.py and training read the same json the same way."""

import json
import logging
import re

import pytest

from helpers.coco_files import IMG, SQUARE, ann, write_coco
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.errors import DatasetError


# ---------------------------------------------------------------- browse_dataset.py on the same inputs
def _browse(tmp_path, monkeypatch, capsys, caplog):
    """Run scripts/browse_dataset.py in this process (a subprocess would spend seconds importing torch)."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "browse_dataset.py"
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # conftest sets it; the script must end as a user sees it
    monkeypatch.setattr(
        "sys.argv",
        [
            "browse_dataset.py",
            "--images",
            str(tmp_path),
            "--ann",
            str(tmp_path / "ann.json"),
            "--min-size",
            "32",
            "--max-size",
            "64",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as info:
        runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr()
    return info.value.code, out.err + caplog.text


def test_browse_dataset_reports_bad_json_without_traceback(tmp_path, monkeypatch, capsys, caplog):
    write_coco(tmp_path, annotations=[ann(1, SQUARE, image_id="1")])
    code, err = _browse(tmp_path, monkeypatch, capsys, caplog)
    assert code == 1  # a DatasetError is printed, not raised (no traceback)
    assert "Traceback" not in err
    assert "DatasetError: " in err and "ann.json: annotation id 1: image_id '1' must be a JSON integer" in err


def test_browse_dataset_skips_bad_annotations_and_names_unreadable_images(tmp_path, monkeypatch, capsys, caplog):
    images = [IMG, {**IMG, "id": 2, "file_name": "b.png"}]
    anns = [ann(1, SQUARE), ann(2, {"size": [16, 20], "counts": ";4"}), ann(3, SQUARE, image_id=2)]
    write_coco(tmp_path, annotations=anns, images=images)
    (tmp_path / "b.png").write_bytes(b"truncated")
    code, err = _browse(tmp_path, monkeypatch, capsys, caplog)
    assert code == 1
    assert "skipped 1 item(s) (1x compressed RLE counts string cannot be decoded" in err
    assert "b.png' (image id 2) cannot be read as an image" in err
    assert "1 of 2 picked image(s) could not be read" in err
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


# ---------------------------------------------------------------- every tool reads the same json the same way
def _report(path, monkeypatch, capsys, *extra):
    """Run scripts/dataset_report.py in this process; returns (exit status, stdout, stderr)."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "dataset_report.py"
    monkeypatch.setattr(
        "sys.argv", ["dataset_report.py", "--train", str(path), "--min-size", "32", "--max-size", "64", *extra]
    )
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _with(**changes):
    """A mutation of the default document of ``write_coco``: top-level keys replaced."""
    return lambda doc: doc.update(changes)


def _all(key, fn, *where):
    def mutate(doc):
        for name in where:
            for item in doc[name]:
                if key in item:
                    item[key] = fn(item[key])

    return mutate


HOSTILE_JSON = [  # (mutation of a valid two-image document, what every tool must say)
    (
        lambda d: (
            _all("id", lambda v: f"img{v}", "images")(d),
            _all("image_id", lambda v: f"img{v}", "annotations")(d),
        ),
        r"image id 'img1' \(images\[0\], file_name 'a\.png'\) must be a JSON integer, got a string",
    ),
    (
        lambda d: (_all("id", str, "categories")(d), _all("category_id", str, "annotations")(d)),
        r"category id '1' \(categories\[0\], name 'thing'\) must be a JSON integer, got a string",
    ),
    (
        lambda d: d["categories"].append({"id": "2", "name": "other"}),
        r"category id '2' \(categories\[1\], name 'other'\) must be a JSON integer",
    ),
    (
        lambda d: d["images"][1].update(id="1"),
        r"image id '1' \(images\[1\], file_name 'b\.png'\) must be a JSON integer",
    ),
    (_all("iscrowd", lambda v: "0", "annotations"), r"annotation id 1 \(image id 1\) has iscrowd '0' \(a string\)"),
    (_with(images=None), r"'images' must be a list, got null"),
    (_with(images=[], annotations=[]), r"'images' is empty"),
    (lambda d: d["images"][0].update(file_name=7), r"image id 1 has file_name 7; it must be a non-empty string"),
    (lambda d: d["images"][0].update(file_name=None), r"image id 1 has file_name None"),
    (lambda d: d["images"][0].update(width=10**9, height=10**9), r"image id 1 \('a\.png'\) is 1000000000x1000000000"),
]


@pytest.mark.parametrize("tool", ["train", "eval", "browse", "report"])
@pytest.mark.parametrize(
    "mutate, pattern",
    HOSTILE_JSON,
    ids=[
        "image-ids-str",
        "category-ids-str",
        "category-ids-mixed",
        "image-id-1-and-'1'",
        "iscrowd-'0'",
        "images-null",
        "images-empty",
        "file_name-number",
        "file_name-null",
        "width-absurd",
    ],
)
def test_every_tool_rejects_the_same_json_naming_file_and_key(
    tmp_path, monkeypatch, capsys, caplog, tool, mutate, pattern
):
    """train / eval (the data module's two datasets), browse_dataset.py and dataset_report.py read the
    same json with the same checks: never a conversion, never a deep traceback."""
    images = [IMG, {**IMG, "id": 2, "file_name": "b.png"}]
    path = write_coco(
        tmp_path,
        images=images,
        annotations=[
            ann(1, SQUARE, bbox=[2, 2, 10, 8], area=80),
            ann(2, SQUARE, image_id=2, bbox=[2, 2, 10, 8], area=80),
        ],
    )
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))
    if tool in ("train", "eval"):
        with pytest.raises(DatasetError, match=r"ann\.json: " + pattern):
            CocoInstanceDataset(tmp_path, path, for_evaluation=tool == "eval")
        return
    if tool == "browse":
        code, err = _browse(tmp_path, monkeypatch, capsys, caplog)
    else:
        code, _, err = _report(path, monkeypatch, capsys)
    assert code == (1 if tool == "browse" else 2) and "Traceback" not in err
    assert re.search(r"ann\.json: " + pattern, err), err


def test_dataset_report_runs_the_training_checks(tmp_path, monkeypatch, capsys, caplog):
    """Skipped annotations are listed as in training; a file training refuses is refused."""
    path = write_coco(
        tmp_path,
        annotations=[
            ann(1, SQUARE, bbox=[2, 2, 10, 8]),
            ann(2, {"size": [16, 20], "counts": "garbage!!"}, bbox=[2, 2, 10, 8]),
        ],
    )
    with caplog.at_level(logging.WARNING):  # the script's warnings (pytest owns the root logger's handlers)
        code, out, err = _report(path, monkeypatch, capsys)
    assert code == 0 and "Dataset fit report" in out
    assert re.search(r"ann\.json: skipped 1 item\(s\) \(1x compressed RLE counts string cannot be decoded", caplog.text)
    write_coco(tmp_path, annotations=[{**ann(1, SQUARE), "iscrowd": 1}])
    code, _, err = _report(path, monkeypatch, capsys)
    assert code == 2 and "no training instance left: of its 1 annotation(s), 1 are crowd regions" in err
    write_coco(tmp_path, annotations=[ann(1, SQUARE, bbox=[2, 2, 10, 8], area=80)])
    val = tmp_path / "val.json"
    val.write_text(json.dumps({**json.loads(path.read_text()), "categories": [{"id": 1, "name": "other"}]}))
    code, _, err = _report(path, monkeypatch, capsys, "--val", str(val))
    assert code == 2 and "give categories different names (train vs val: id 1: 'thing' vs 'other')" in err
