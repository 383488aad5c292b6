"""Render the W&B validation overlays of an offline run locally, from the files the run logged.

The W&B UI draws ``val/samples/<image_id>`` images with their "ground_truth" and "predictions"
mask and box layers; without an account (or offline) that UI cannot be reached, so this script
draws the same layers from the run directory: the image PNG, the mask label-map PNGs, the box
json and the class labels, exactly as ``wandb sync`` would upload them. One row per sample image:
the image, the ground truth layers and the prediction layers (boxes with score >= --min-score,
as the UI's score slider would show them). It also prints the last per-class AP table.

    python scripts/render_wandb_overlay.py outputs/train/<run>/wandb/offline-run-<...> \
        --out docs/wandb_overlay.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.wandb_run_reader import OfflineRun, read_offline_run
from maskrcnn.data.draw import PALETTE


def colour(label: int) -> tuple[int, int, int]:
    """The colour ``maskrcnn.data.draw`` gives ``label``; black for the background."""
    return tuple(int(c) for c in PALETTE[label % len(PALETTE)]) if label > 0 else (0, 0, 0)


def draw_layer(
    image: np.ndarray,
    label_map: np.ndarray | None,
    boxes: list[dict],
    class_labels: dict[int, str],
    scale: int,
    min_score: float,
    alpha: float = 0.5,
) -> Image.Image:
    """The image with one mask layer (label map ``uint8 [H, W]``) and one box layer drawn."""
    out = image.astype(np.float32)
    if label_map is not None:
        for label in np.unique(label_map):
            if label:
                hit = label_map == label
                out[hit] = (1 - alpha) * out[hit] + alpha * np.array(colour(int(label)), dtype=np.float32)
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8)).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST
    )
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for box in boxes:
        score = box.get("scores", {}).get("score")
        if score is not None and score < min_score:
            continue
        p = box["position"]
        x0, y0, x1, y1 = (v * scale for v in (p["minX"], p["minY"], p["maxX"], p["maxY"]))
        rgb = colour(int(box["class_id"]))
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=rgb, width=2)
        caption = box.get("box_caption") or class_labels.get(int(box["class_id"]), str(box["class_id"]))
        left, top, right, bottom = draw.textbbox((x0, y0), caption, font=font)
        ty = y0 - (bottom - top) - 3 if y0 - (bottom - top) - 3 >= 0 else y0
        draw.rectangle([x0, ty, x0 + right - left + 4, ty + bottom - top + 3], fill=rgb)
        draw.text((x0 + 2, ty), caption, fill=(0, 0, 0) if sum(rgb) > 380 else (255, 255, 255), font=font)
    return canvas


def sample_keys(run: OfflineRun) -> list[str]:
    """``val/samples/<image_id>`` keys, by image id."""
    keys = {key for key in run.keys() if key.startswith("val/samples/")}
    return sorted(keys, key=lambda k: int(k.rsplit("/", 1)[-1]))


def load_layers(run: OfflineRun, key: str, row: dict) -> dict:
    """Image, label maps, boxes and class labels of one logged ``wandb.Image``."""
    files = run.files_dir
    descriptor = row[key]
    layers = {"image": np.asarray(Image.open(files / descriptor["path"]).convert("RGB"))}
    mask_labels = run.config.get("_wandb", {}).get("mask/class_labels", {})
    for layer in ("ground_truth", "predictions"):
        mask = descriptor.get("masks", {}).get(layer)
        layers[f"{layer}_mask"] = np.asarray(Image.open(files / mask["path"])) if mask else None
        box = descriptor.get("boxes", {}).get(layer)
        box_json = json.loads((files / box["path"]).read_text()) if box else {"box_data": [], "class_labels": {}}
        layers[f"{layer}_boxes"] = box_json["box_data"]
        names = mask_labels.get(f"{key}_wandb_delimeter_{layer}", {}).get("value") or box_json["class_labels"]
        layers[f"{layer}_labels"] = {int(k): v for k, v in names.items()}
    return layers


def render(run: OfflineRun, max_images: int, scale: int, min_score: float) -> tuple[Image.Image, int]:
    """A grid (rows: sample images; columns: image, ground truth, predictions) of the last
    validation that logged samples; also returns that validation's ``trainer/global_step``."""
    keys = sample_keys(run)[:max_images]
    if not keys:
        raise SystemExit(f"{run.run_dir}: no val/samples/<image_id> images were logged")
    row = next(r for r in reversed(run.history) if all(k in r for k in keys))
    panels = []
    for key in keys:
        layers = load_layers(run, key, row)
        image = layers["image"]
        panels.append(
            [
                draw_layer(image, None, [], {}, scale, min_score),
                draw_layer(
                    image,
                    layers["ground_truth_mask"],
                    layers["ground_truth_boxes"],
                    layers["ground_truth_labels"],
                    scale,
                    min_score,
                ),
                draw_layer(
                    image,
                    layers["predictions_mask"],
                    layers["predictions_boxes"],
                    layers["predictions_labels"],
                    scale,
                    min_score,
                ),
            ]
        )
    titles = ["image", "ground_truth (masks + boxes)", f"predictions (masks + boxes, score >= {min_score:g})"]
    width = max(p.width for r in panels for p in r)
    heights = [max(p.height for p in r) for r in panels]
    pad, header = 6, 18
    grid = Image.new("RGB", (3 * width + 4 * pad, header + sum(heights) + (len(panels) + 1) * pad), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for c, title in enumerate(titles):
        draw.text((pad + c * (width + pad), 4), title, fill=(0, 0, 0), font=font)
    y = header + pad
    for r, row_panels in enumerate(panels):
        for c, panel in enumerate(row_panels):
            grid.paste(panel, (pad + c * (width + pad), y))
        y += heights[r] + pad
    return grid, int(row.get("trainer/global_step", -1))


def per_class_markdown(run: OfflineRun) -> str:
    rows = [r for r in run.history if "val/per_class_AP" in r]
    if not rows:
        return "(no val/per_class_AP table logged)"
    table = run.table(rows[-1]["val/per_class_AP"])
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table["data"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="an offline-run-* directory (or a run dir with wandb/ inside)")
    parser.add_argument("--out", type=Path, default=Path("docs/wandb_overlay.png"))
    parser.add_argument("--max-images", type=int, default=4)
    parser.add_argument("--scale", type=int, default=3, help="upscaling of small images (nearest neighbour)")
    parser.add_argument("--min-score", type=float, default=0.5, help="the UI score slider: boxes below are hidden")
    args = parser.parse_args(argv)
    run_dir = args.run_dir
    if not list(run_dir.glob("run-*.wandb")):
        candidates = sorted(run_dir.glob("wandb/offline-run-*")) or sorted(run_dir.glob("offline-run-*"))
        if not candidates:
            raise SystemExit(f"{run_dir}: neither an offline-run-* directory nor a folder holding one")
        run_dir = candidates[-1]
    run = read_offline_run(run_dir)
    grid, step = render(run, args.max_images, args.scale, args.min_score)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height}) from {run_dir}, trainer/global_step {step}")
    print(per_class_markdown(run))


if __name__ == "__main__":
    main()
