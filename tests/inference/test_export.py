"""ONNX / TorchScript export (maskrcnn.inference.export_graph, scripts/export.py): exported == eager
on a tiny model.

The graph is traced on ONE image and then run on OTHER images whose proposal and detection
counts differ, so a count frozen into the graph would show up as a mismatch.
"""

import copy
import warnings

import onnx
import pytest
import torch

from helpers.random_checkpoint import save_random_checkpoint
from helpers.scripts import load_script
from helpers.tiny_model import build_tiny_model
from maskrcnn.inference.export_graph import (
    ExportWrapper,
    example_image,
    export_onnx,
    export_torchscript,
    run_exported,
)
from maskrcnn.modeling.postprocess import paste_masks

SIZE = (96, 128)


def _box_image(height: int, width: int) -> torch.Tensor:
    """Tensor[3, H, W]: a white rectangle on black (fewer detections than noise images)."""
    image = torch.zeros(3, height, width)
    image[:, height // 5 : height * 3 // 5, width // 4 : width * 3 // 4] = 1.0
    return image


@pytest.fixture(scope="module")
def net():
    return build_tiny_model(num_classes=3, score_thresh=0.0, seed=0)


@pytest.fixture(scope="module")
def images():
    return [_box_image(*SIZE)] + [example_image(SIZE, seed=s) for s in (1, 2)]


def _eager(net, image):
    with torch.no_grad():
        return ExportWrapper(net)(image)


def _assert_matches(exported, eager, atol_boxes, atol_scores, allow_empty=False):
    boxes, labels, scores, masks = exported
    assert boxes.shape[0] == eager[0].shape[0] and (allow_empty or boxes.shape[0] > 0)
    assert boxes.shape == eager[0].shape and masks.shape == eager[3].shape
    assert labels.dtype == torch.int64 and torch.equal(labels, eager[1])
    torch.testing.assert_close(boxes, eager[0], atol=atol_boxes, rtol=1e-5)
    torch.testing.assert_close(scores, eager[2], atol=atol_scores, rtol=0)
    torch.testing.assert_close(masks, eager[3], atol=atol_boxes, rtol=0)


@pytest.fixture(scope="module")
def onnx_path(net, images, tmp_path_factory):
    return export_onnx(net, tmp_path_factory.mktemp("onnx") / "tiny.onnx", SIZE, opset=17, example=images[0])


def test_onnx_matches_eager_with_varying_detection_counts(net, images, onnx_path):
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["boxes", "labels", "scores", "masks"]
    counts = []
    for image in images:
        eager = _eager(net, image)
        _assert_matches(run_exported(onnx_path, image), eager, atol_boxes=5e-4, atol_scores=1e-4)
        counts.append(eager[0].shape[0])
    # the traced image's count differs from the others'
    assert any(c != counts[0] for c in counts[1:]), counts


def test_traced_paste_masks_keeps_mask_count_dynamic():
    # eager pastes in chunks of 64 with a Python loop; traced at exactly 64 masks that loop would
    # freeze into one 64-mask chunk and leave masks 64.. empty
    g = torch.Generator().manual_seed(0)

    def sample(n):
        xy = torch.rand(n, 2, generator=g) * 60
        return torch.rand(n, 1, 28, 28, generator=g), torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 40], 1)

    def paste(masks, boxes):
        return paste_masks(masks, boxes, (70, 90))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(paste, sample(64), check_trace=False)
    for n in (100, 3):
        masks, boxes = sample(n)
        torch.testing.assert_close(traced(masks, boxes), paste(masks, boxes), atol=1e-6, rtol=0)


def test_onnx_traced_on_a_single_detection(net, images, tmp_path):
    # the exporter specialises single-element indexing (e.g. ``out[idx] = x`` with one RoI on a
    # level) to a fixed shape; trace where the example yields exactly one detection, run on others
    kept = 1
    net = copy.deepcopy(net)
    scores = _eager(net, images[1])[2].sort(descending=True).values
    assert scores.numel() > kept
    net.roi_heads.score_thresh = float(scores[kept - 1] + scores[kept]) / 2
    assert _eager(net, images[1])[0].shape[0] == kept
    path = export_onnx(net, tmp_path / "edge.onnx", SIZE, example=images[1])
    counts = []
    for image in images:
        eager = _eager(net, image)
        _assert_matches(run_exported(path, image), eager, atol_boxes=5e-4, atol_scores=1e-4, allow_empty=True)
        counts.append(eager[0].shape[0])
    assert any(c != kept for c in counts), counts


def test_onnx_rejects_other_image_size(onnx_path):
    with pytest.raises(Exception, match="(?i)dimension"):
        run_exported(onnx_path, example_image((64, 128)))


def test_onnx_second_export_size_with_resize(net, tmp_path):
    # 64 x 80 is resized by the model's transform (x1.5) and its masks pasted back at 64 x 80
    size = (64, 80)
    path = export_onnx(net, tmp_path / "small.onnx", size, example=_box_image(*size))
    image = example_image(size, seed=7)
    _assert_matches(run_exported(path, image), _eager(net, image), atol_boxes=5e-4, atol_scores=1e-4)


def test_onnx_empty_result_at_runtime(net, tmp_path):
    # threshold between the best score of a grey image and of the trace image: the graph is traced
    # WITH detections and must return empty tensors (not fail) on the grey image
    net = copy.deepcopy(net)
    grey, trace = torch.full((3, *SIZE), 0.5), _box_image(*SIZE)
    best = [float(_eager(net, im)[2].max()) for im in (grey, trace)]
    assert best[0] < best[1]
    net.roi_heads.score_thresh = sum(best) / 2  # NMS keeps the top score, so grey now gives none
    path = export_onnx(net, tmp_path / "m.onnx", SIZE, example=trace)
    boxes, labels, scores, masks = run_exported(path, grey)
    assert boxes.shape == (0, 4) and labels.shape == (0,) and scores.shape == (0,) and masks.shape == (0, 1, *SIZE)


def test_torchscript_matches_eager_and_guards_size(net, images, tmp_path):
    path = export_torchscript(net, tmp_path / "tiny.pt", SIZE, example=images[0])
    for image in images[:2]:
        _assert_matches(run_exported(path, image), _eager(net, image), atol_boxes=1e-5, atol_scores=1e-6)
    with pytest.raises(torch.jit.Error, match="export size"):
        run_exported(path, example_image((64, 128)))


def test_export_errors(net, tmp_path):
    rle = copy.deepcopy(net)
    rle.mask_format = "rle"
    with pytest.raises(ValueError, match="mask_format"):
        export_onnx(rle, tmp_path / "a.onnx", SIZE)
    strict = copy.deepcopy(net)
    strict.roi_heads.score_thresh = 1.0  # softmax scores never exceed 1: no detections
    with pytest.raises(ValueError, match="no detections"):
        export_torchscript(strict, tmp_path / "b.pt", SIZE)
    with pytest.raises(ValueError, match="example must be"):
        export_onnx(net, tmp_path / "c.onnx", SIZE, example=torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(net, tmp_path / "d.onnx", SIZE, opset=11)
    with pytest.raises(ValueError, match="format"):
        run_exported(tmp_path / "e.bin", example_image(SIZE), fmt="tflite")


def test_cli_exports_a_training_checkpoint_to_torchscript(tmp_path, capsys):
    ckpt = save_random_checkpoint(tmp_path / "random.ckpt", ["model.roi_heads.score_thresh=0.0"])
    out = tmp_path / "cli.pt"
    diffs = load_script("export").main(
        ["--ckpt", str(ckpt), "--format", "torchscript", "--out", str(out), "--height", "64", "--width", "96"]
    )
    assert out.is_file() and max(diffs.values()) < 1e-4
    assert "max |exported - eager| masks" in capsys.readouterr().out


def test_cli_mistakes_end_with_one_line_before_or_instead_of_a_traceback(tmp_path, capsys, caplog, monkeypatch):
    """A folder as --out, an example image without detections and a zero size: one message each."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # conftest sets it; users do not
    ckpt = save_random_checkpoint(tmp_path / "random.ckpt", ["model.roi_heads.score_thresh=0.0"])
    main = load_script("export").main

    def message(args) -> tuple[int, str]:
        caplog.clear()
        with pytest.raises(SystemExit) as info:
            main(args)
        return info.value.code, caplog.text + capsys.readouterr().err  # logged, or printed without logging

    code, text = message(
        ["--ckpt", str(ckpt), "--format", "torchscript", "--out", str(tmp_path), "--height", "64", "--width", "96"]
    )
    assert code == 1 and f"--out {str(tmp_path)!r} is a folder" in text and "Traceback" not in text
    nothing = save_random_checkpoint(tmp_path / "strict.ckpt", ["model.roi_heads.score_thresh=1.0"])
    code, text = message(
        [
            "--ckpt",
            str(nothing),
            "--format",
            "torchscript",
            "--out",
            str(tmp_path / "m.pt"),
            "--height",
            "64",
            "--width",
            "96",
        ]
    )
    assert code == 1 and "gives no detections" in text and "Traceback" not in text
    code, text = message(["--ckpt", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--height", "0"])
    assert code == 2 and "argument --height: must be a positive integer, got 0" in text
