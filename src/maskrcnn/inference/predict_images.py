"""Run a trained checkpoint on image files: PNG overlays + a COCO results JSON.

``predict(cfg)`` is called by ``src/predict.py``; the model is rebuilt from the config stored in
the checkpoint, so only ``ckpt_path``, ``input`` and ``output`` are needed.

Large photos cost about what the model input costs: a JPEG is decoded at 1/2, 1/4 or 1/8 scale
when that still covers the model's input size (DCT scaling, ``image_io.load_rgb(at_least=...)``),
other formats are shrunk by an integer factor while still 8-bit, and masks are pasted at the
original resolution straight into RLE, each over its box only. Overlays are drawn at the decoded size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from rich.progress import track
from torch import Tensor

from maskrcnn.data.draw import draw_instances
from maskrcnn.data.readers.image_io import image_to_tensor, load_rgb
from maskrcnn.errors import ConfigError, DatasetError
from maskrcnn.inference.inputs import list_inputs, load_for_model, overlay_names
from maskrcnn.inference.optimize.fast_inference import optimize_for_inference
from maskrcnn.inference.predict_files import PredictionFiles
from maskrcnn.inference.predict_options import check_output, check_predict_config
from maskrcnn.inference.slice_options import SliceOptions
from maskrcnn.inference.slicing import sliced_detections
from maskrcnn.inference.tta import TestTimeAugmentation
from maskrcnn.inference.tta_options import build_tta
from maskrcnn.modeling.mask_crops import crops_to_masks
from maskrcnn.modeling.mask_rcnn import MaskRCNN
from maskrcnn.modeling.postprocess import paste_masks
from maskrcnn.modeling.structures import RoIDetection
from maskrcnn.modeling.transform import map_boxes_to_original
from maskrcnn.run_checkpoint import build_net_from_checkpoint, checkpoint_meta, describe_checkpoint, read_run_checkpoint

log = logging.getLogger(__name__)

# Float elements one mask-pasting chunk may hold (x4 bytes): 2 masks of a 24-megapixel photo.
PASTE_BUDGET = 2**26


def load_checkpoint_model(ckpt_path: str | Path, mask_format: str = "rle") -> tuple[MaskRCNN, dict]:
    """Rebuild the network from a training checkpoint. Returns ``(net, meta)`` where meta holds
    ``class_names`` and ``label_to_category_id``.

    Raises:
        FileNotFoundError / CheckpointError: naming the path (see ``maskrcnn.run_checkpoint``).
    """
    ckpt = read_run_checkpoint(ckpt_path)
    logging.getLogger("maskrcnn").info("Loading %s", describe_checkpoint(ckpt_path, ckpt))
    net = cast(MaskRCNN, build_net_from_checkpoint(ckpt, ckpt_path, mask_format=mask_format))  # run configs build one
    return net, checkpoint_meta(ckpt)


def _detect(
    net: MaskRCNN, images: list[Tensor], tta: TestTimeAugmentation | None = None
) -> tuple[list[RoIDetection], list[tuple[int, int]]]:
    """``MaskRCNN.forward``'s inference path, stopped before mask pasting: the M x M masks are pasted
    here at the size of the original file rather than of the (reduced) input tensor. With ``tta``,
    the views' merged detections (``TestTimeAugmentation.detect``), in the pixels of ``images``.

    Returns:
        detections: per image an ``RoIDetection`` whose boxes are in the pixels of the second value;
            (h, w) per image: resized, or with ``tta`` that of ``images``.
    """
    if tta is not None:
        return tta.detect(images), [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    batch, _ = net.transform(images, None)
    features = net.backbone(batch.tensors)
    proposals, _ = net.rpn(batch, features, None)
    detections, _ = net.roi_heads(features, proposals, batch.image_sizes, None)
    return detections, list(batch.image_sizes)


def _chunk(size: tuple[int, int]) -> int:
    return max(1, PASTE_BUDGET // (size[0] * size[1]))


@torch.inference_mode()
def predict(cfg: DictConfig) -> Path:
    """Writes one PNG overlay per image (``<output>/<path below the input root>.png``, see
    ``inputs.overlay_names``), ``predictions.json`` (COCO results with RLE masks at the original
    resolution), ``images.json`` (the image list those results refer to: ``file_name`` the input
    path, ``overlay`` its overlay below ``output``) and, when inputs could not be read,
    ``skipped_inputs.jsonl``. Returns the output folder.

    Raises:
        ConfigError: a bad config value (checked before the model is loaded), naming the key.
        FileNotFoundError: ``input`` names no file with an image suffix.
        DatasetError: no input could be read, or (``strict=true``) the first unreadable input.
    """
    opts = check_predict_config(cfg)
    inputs = list_inputs(str(cfg.input))
    files = inputs.files
    overlays = overlay_names(files, inputs.root)
    readable = {os.path.realpath(f) for f in files if f not in inputs.problems}
    for f, name in overlays.items():  # output=<the input folder> would replace x.png by its overlay
        if os.path.realpath(Path(str(cfg.get("output"))) / name) in readable:
            raise ConfigError(
                f"output={str(cfg.get('output'))!r}: the overlay {name} would overwrite "
                f"the input {str(f)!r}; choose another output folder"
            )
    out_dir = check_output(cfg.get("output"))
    net, meta = load_checkpoint_model(cfg.ckpt_path)
    device, thresh, batch_size, strict = opts.device, opts.score_thresh, opts.batch_size, opts.strict
    net.to(device)
    if opts.inference_options is not None:  # conf/inference/{eager,fast}.yaml
        net = optimize_for_inference(net, **opts.inference_options)
    tta = build_tta(opts.tta, net)  # None for tta=none
    transform: Any = net.transform  # an ImageTransform (min_size, max_size)
    min_size, max_size = int(transform.min_size[-1]), int(transform.max_size)
    if tta is not None:  # the largest view decides how small a photo may be decoded
        min_size = max(min_size, *(v.min_size for v in tta.views))
        max_size = max(max_size, *(v.max_size for v in tta.views))
    outputs = PredictionFiles(out_dir, overlays)
    try:
        batch: list[tuple[Path, np.ndarray, tuple[int, int]]] = []
        for index, path in enumerate(track(files, description="predict")):
            try:
                if path in inputs.problems:  # a broken link, a directory named x.jpg, ...
                    raise DatasetError(inputs.problems[path])
                if opts.slicing is not None:  # one image at a time, at full resolution
                    _predict_sliced(net, path, device, thresh, meta, outputs, opts.slicing, (min_size, max_size))
                    outputs.save()
                    continue
                batch.append((path, *load_for_model(path, min_size, max_size)))
            except DatasetError as error:
                outputs.skip(path, error)
                if strict:
                    if batch:  # the inputs read before this one still get their results
                        _predict_batch(net, batch, device, thresh, meta, outputs, tta)
                    raise DatasetError(f"{error} (strict=true stops at the first unreadable input)") from error
            if batch and (len(batch) == batch_size or index == len(files) - 1):
                _predict_batch(net, batch, device, thresh, meta, outputs, tta)
                batch = []
                outputs.save()
    finally:
        outputs.save(force=True)
    if tta is not None:
        log.info(tta.cost.line())
    summary = f"{len(outputs.results)} detections for {len(outputs.images)} images to {out_dir}"
    if outputs.skipped:
        summary += f"; skipped {len(outputs.skipped)} unreadable input(s), listed in {outputs.skipped_path}"
    log.info("Wrote %s", summary)
    if not outputs.images:
        raise DatasetError(
            f"input={str(cfg.input)!r}: none of the {len(files)} image file(s) could be read "
            f"(reasons in {outputs.skipped_path})"
        )
    return out_dir


def _predict_batch(
    net: MaskRCNN,
    batch: list,
    device: torch.device,
    thresh: float,
    meta: dict,
    outputs: PredictionFiles,
    tta: TestTimeAugmentation | None = None,
) -> None:
    """Detect on a batch of ``(path, decoded image, original size)``; add rows and write overlays."""
    tensors = [image_to_tensor(array).to(device) for _, array, _ in batch]
    detections, resized_sizes = _detect(net, tensors, tta)
    for (path, array, original), det, resized in zip(batch, detections, resized_sizes, strict=True):
        keep = det["scores"] >= thresh
        masks, labels, scores = det["masks"][keep], det["labels"][keep], det["scores"][keep]
        boxes = map_boxes_to_original(det["boxes"][keep], resized, original)  # Tensor[D, 4] xyxy, file pixels
        # box-cropped RLEs: the cost grows with the boxes, not with a 24-megapixel photo
        rles = paste_masks(masks, boxes, original, mask_format="rle", aligned=net.paste_aligned)
        decoded = array.shape[:2]
        drawn_boxes = map_boxes_to_original(det["boxes"][keep], resized, decoded)
        drawn_masks = paste_masks(
            masks, drawn_boxes, decoded, mask_format="binary", chunk_size=_chunk(decoded), aligned=net.paste_aligned
        )
        assert isinstance(drawn_masks, Tensor) and isinstance(rles, list)  # mask_format="binary" / "rle"
        drawn = (array, drawn_boxes.cpu(), drawn_masks.cpu())
        _record(outputs, meta, path, original, (boxes, labels.cpu(), scores.cpu(), rles), drawn)


def _predict_sliced(
    net: MaskRCNN,
    path: Path,
    device: torch.device,
    thresh: float,
    meta: dict,
    outputs: PredictionFiles,
    slicing: SliceOptions,
    model_size: tuple[int, int],
) -> None:
    """Sliced inference (``inference.slice``) of one image decoded at full resolution; the overlay is
    drawn at about the size plain predict decodes it at for a model resizing to ``model_size``
    (min_size, max_size), masks sampled from the full-resolution crops."""
    array = load_rgb(path)
    original = (int(array.shape[0]), int(array.shape[1]))
    result = sliced_detections(net, image_to_tensor(array).to(device), slicing)
    keep = (result.scores >= thresh).tolist()
    crops = [c for c, k in zip(result.crops, keep, strict=True) if k]
    boxes, labels, scores = result.boxes[keep], result.labels[keep], result.scores[keep]
    scale = min(model_size[0] / min(original), model_size[1] / max(original))
    factor = int(1.0 / scale) if scale < 1.0 else 1
    small = np.asarray(Image.fromarray(array).reduce(factor)) if factor >= 2 else array
    del array
    drawn_boxes = map_boxes_to_original(boxes, original, small.shape[:2])
    drawn = (small, drawn_boxes, torch.from_numpy(crops_to_masks(crops, original, small.shape[:2])))
    _record(outputs, meta, path, original, (boxes, labels, scores, [c.to_rle(*original) for c in crops]), drawn)


def _record(
    outputs: PredictionFiles,
    meta: dict,
    path: Path,
    original: tuple[int, int],
    found: tuple[Tensor, Tensor, Tensor, list],
    drawn: tuple[np.ndarray, Tensor, Tensor],
) -> None:
    """Add the rows of one image and write its overlay.

    found: boxes Tensor[D, 4] xyxy in file pixels, labels [D], scores [D], D RLEs of the full image.
    drawn: the picture ``uint8 [h, w, 3]``, boxes Tensor[D, 4] and masks ``bool [D, h, w]`` at its size.
    """
    names, to_cat = meta["class_names"], meta["label_to_category_id"]
    image_id = len(outputs.images) + 1
    overlay = outputs.overlays[path]
    outputs.images.append(
        {"id": image_id, "file_name": str(path), "overlay": overlay, "height": original[0], "width": original[1]}
    )
    boxes, labels, scores, rles = found
    for box, label, score, rle in zip(boxes.tolist(), labels.tolist(), scores.tolist(), rles, strict=True):
        x0, y0, x1, y1 = box
        outputs.results.append(
            {
                "image_id": image_id,
                "category_id": to_cat.get(int(label), int(label)),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(score),
                "segmentation": rle,
            }
        )
    picture, drawn_boxes, drawn_masks = drawn
    picture = draw_instances(picture, drawn_boxes, drawn_masks, labels, names, scores=scores)
    target = outputs.out_dir / overlay
    target.parent.mkdir(parents=True, exist_ok=True)  # overlays mirror the input's subfolders
    Image.fromarray(np.ascontiguousarray(picture)).save(target)
