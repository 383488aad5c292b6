"""Run a trained checkpoint on image files: PNG overlays + a COCO results JSON.

``predict(cfg)`` is called by ``src/predict.py``; the model is rebuilt from the config stored in
the checkpoint, so only ``ckpt_path``, ``input`` and ``output`` are needed.
"""

from __future__ import annotations

import glob
import json
import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image
from rich.progress import track

from maskrcnn.data.image_io import image_to_tensor, load_rgb
from maskrcnn.data.draw import draw_instances
from maskrcnn.training.callbacks import detections_to_numpy

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(spec: str) -> list[Path]:
    """A directory (its images, sorted), a glob pattern, or a single file."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"input={spec!r}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def load_checkpoint_model(ckpt_path: str | Path, mask_format: str = "rle") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network from a training checkpoint. Returns ``(net, meta)`` where meta holds
    ``class_names`` and ``label_to_category_id``."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r} does not exist")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    run_config = ckpt.get("run_config")
    if not run_config or "model" not in run_config:
        raise ValueError(f"{ckpt_path} has no stored run config; was it written by src/train.py?")
    model_cfg = dict(run_config["model"], mask_format=mask_format, init_from=None)
    model_cfg["backbone"] = dict(model_cfg["backbone"], pretrained=False)
    net = instantiate(model_cfg, _convert_="all")
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state, strict=True)
    meta = {
        "class_names": ckpt.get("class_names") or [],
        "label_to_category_id": {int(k): int(v) for k, v in (ckpt.get("label_to_category_id") or {}).items()},
    }
    return net.eval(), meta


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.inference_mode()
def predict(cfg) -> Path:
    """Writes ``<output>/<stem>.png`` overlays, ``predictions.json`` (COCO results with RLE masks)
    and ``images.json`` (the image list those results refer to). Returns the output folder."""
    files = list_images(str(cfg.input))
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.get("device", "auto"))
    net, meta = load_checkpoint_model(cfg.ckpt_path, mask_format="rle")
    net.to(device)
    names, to_cat = meta["class_names"], meta["label_to_category_id"]
    thresh = float(cfg.get("score_thresh", 0.5))
    results, images_meta = [], []
    batch_size = int(cfg.get("batch_size", 2))
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    for batch in track(batches, description="predict"):
        arrays = [load_rgb(p) for p in batch]
        tensors = [image_to_tensor(a).to(device) for a in arrays]
        detections = net(tensors)["detections"]
        for path, array, det in zip(batch, arrays, detections):
            image_id = len(images_meta) + 1
            images_meta.append({"id": image_id, "file_name": str(path), "height": array.shape[0], "width": array.shape[1]})
            d = detections_to_numpy(det, thresh)
            rles = [r for r, s in zip(det["masks"], det["scores"].tolist()) if s >= thresh]
            for box, label, score, rle in zip(d["boxes"], d["labels"], d["scores"], rles):
                x0, y0, x1, y1 = (float(v) for v in box)
                results.append({
                    "image_id": image_id,
                    "category_id": to_cat.get(int(label), int(label)),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                    "segmentation": rle,
                })
            picture = draw_instances(array, d["boxes"], d["masks"], d["labels"], names, scores=d["scores"])
            Image.fromarray(np.ascontiguousarray(picture)).save(out_dir / f"{path.stem}.png")
    (out_dir / "predictions.json").write_text(json.dumps(results))
    (out_dir / "images.json").write_text(json.dumps(images_meta, indent=1))
    log.info("Wrote %d detections for %d images to %s", len(results), len(files), out_dir)
    return out_dir
