"""Validation asks the network for RLE masks, whatever ``model.mask_format`` says: the evaluator and
the image loggers read RLE, and pasting one mask at a time keeps large photos in memory. That RLE
masks are the thresholded probability masks is tests/modeling/test_large_image_memory.py; that the
evaluator scores both alike is tests/evaluation/test_evaluation.py::test_mask_formats_agree."""

from __future__ import annotations

from helpers.config import compose
from maskrcnn.modeling.mask_rcnn import MaskRCNN
from maskrcnn.training.pipeline import train


def test_validation_asks_for_rle_masks_and_leaves_the_users_mask_format(tiny, shapes_dir, tmp_path, monkeypatch):
    calls: list[tuple[bool, object, list]] = []
    forward = MaskRCNN.forward

    def spy(self, images, targets=None, mask_format=None):
        out = forward(self, images, targets, mask_format=mask_format)
        calls.append((self.training, mask_format, out.get("detections", [])))
        return out

    monkeypatch.setattr(MaskRCNN, "forward", spy)
    cfg = compose(
        [*tiny, "trainer.max_epochs=1", "model.mask_format=prob", "validate_after_train=false"],
        output_dir=tmp_path,
        data_dir=shapes_dir,
    )
    metrics, objects = train(cfg)
    validation = [(fmt, dets) for training, fmt, dets in calls if not training]
    assert validation and all(fmt == "rle" for fmt, _ in validation)
    assert all(isinstance(d["masks"], list) for _, dets in validation for d in dets)
    assert objects["module"].net.mask_format == "prob"  # the user's choice, for predict and export
    assert "val/segm_AP" in metrics
