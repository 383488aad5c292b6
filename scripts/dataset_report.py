"""Dataset-fit report of a COCO-format dataset for the training settings (no image decoding).

python scripts/dataset_report.py --train tests/assets/nuts/annotations.json \
    [--val VAL.json] [--min-size 800] [--max-size 1333 | --native] [--anchor-sizes 32 64 128 256 512] \
    [--detections-per-img 100] [--out dataset_fit.json]

Prints counts per split and class, object sizes at the training scale against the anchors, warnings
with the Hydra override line to paste, and suggested anchor sizes / min_size
(``maskrcnn.data.fit.report``). The json files first get the checks training runs on them (ids,
types, structure, categories equal across the splits, at least one training instance; no image is
opened): a file training would reject is rejected here with the same message. Skipped annotations
are summarised as warnings. Object boxes are measured from the masks, as training takes them (the
json ``bbox`` may be absent); a json bbox that disagrees with its mask is listed in a warning.
Exit status 0 even with warnings; 2 when a json cannot be used.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from maskrcnn.cli_args import output_file, positive_float, positive_int, unit_fraction
from maskrcnn.data.checks.setup import check_same_categories, check_training_instances
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.fit.report import compute_fit_report
from maskrcnn.data.fit.report_text import format_report
from maskrcnn.errors import DatasetError


def check_like_training(train: str, val: str | None) -> None:
    """Raise the DatasetError training would raise for these files (json checks only)."""
    train_set = CocoInstanceDataset(Path(train).parent, train)
    check_training_instances(train_set)
    if val is not None:
        check_same_categories(train_set, CocoInstanceDataset(Path(val).parent, val, for_evaluation=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="training annotation json")
    parser.add_argument("--val", help="validation annotation json")
    parser.add_argument(
        "--min-size",
        type=positive_int,
        nargs="+",
        default=[800],
        help="shortest edge of the training resize; several = multi-scale training",
    )
    parser.add_argument("--max-size", type=positive_int, default=1333, help="cap of the longest edge")
    parser.add_argument(
        "--native",
        action="store_true",
        help="objects at their file size, as augmentation=tiles (or none) trains them; --min-size/--max-size unused",
    )
    parser.add_argument(
        "--anchor-sizes",
        type=positive_float,
        nargs="+",
        default=[32, 64, 128, 256, 512],
        help="one anchor size per FPN level (model.rpn.anchor_sizes)",
    )
    parser.add_argument(
        "--aspect-ratios",
        type=positive_float,
        nargs="+",
        default=[0.5, 1.0, 2.0],
        help="anchor aspect ratios h/w, the same on every level",
    )
    parser.add_argument(
        "--detections-per-img", type=positive_int, default=100, help="model.roi_heads.detections_per_img"
    )
    parser.add_argument("--rpn-fg-iou", type=unit_fraction, default=0.7, help="model.rpn.fg_iou_thresh")
    parser.add_argument("--class-min-instances", type=positive_int, default=10, help="warn for classes with fewer")
    parser.add_argument("--out", type=output_file, help="also write the report as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    try:
        check_like_training(args.train, args.val)
        report = compute_fit_report(
            args.train,
            args.val,
            min_size=None if args.native else args.min_size[0] if len(args.min_size) == 1 else args.min_size,
            max_size=args.max_size,
            anchor_sizes=[[int(s) if s == int(s) else s] for s in args.anchor_sizes],
            aspect_ratios=[args.aspect_ratios],
            detections_per_img=args.detections_per_img,
            class_min_instances=args.class_min_instances,
            rpn_fg_iou_thresh=args.rpn_fg_iou,
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=1))
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
