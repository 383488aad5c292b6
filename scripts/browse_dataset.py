"""Render ground truth AFTER the training augmentation, to eyeball a dataset and its pipeline.

python scripts/browse_dataset.py --images tests/assets/nuts/images --ann tests/assets/nuts/annotations.json \
    --augmentation default --num 8 --out outputs/browse

The json goes through the same checks as training. A structural error prints its message (naming
file, id and key) and exits with status 1; skipped annotations are summarised as warnings.
Unreadable image files are named and skipped, the others are still rendered, and the exit status
is then 1.
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from maskrcnn.cli import exit_on_expected_errors
from maskrcnn.cli_args import output_folder, positive_int
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.draw import draw_instances
from maskrcnn.data.readers.image_io import image_to_uint8
from maskrcnn.data.transforms import AUGMENTATIONS, build_transforms


@exit_on_expected_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="image folder")
    parser.add_argument("--ann", required=True, help="COCO annotation json")
    parser.add_argument("--augmentation", default="default", choices=AUGMENTATIONS)
    parser.add_argument("--min-size", type=positive_int, default=800)
    parser.add_argument("--max-size", type=positive_int, default=1333)
    parser.add_argument("--lsj-size", type=positive_int, default=1024, help="output square of --augmentation lsj")
    parser.add_argument("--num", type=positive_int, default=8, help="number of images to render")
    parser.add_argument("--seed", type=int, default=0, help="which images are picked")
    parser.add_argument("--out", required=True, type=output_folder, help="output folder for PNGs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    transforms = build_transforms(
        args.augmentation, train=True, min_size=args.min_size, max_size=args.max_size, lsj_size=args.lsj_size
    )
    # a structural DatasetError ends the script with its one message (exit_on_expected_errors)
    dataset = CocoInstanceDataset(args.images, args.ann, transforms=transforms, bad_images="skip")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    picks = rng.permutation(len(dataset))[: args.num]
    unreadable = 0
    for index in picks:
        item = dataset[int(index)]
        if item is None:  # unreadable file; the dataset logged which and why
            unreadable += 1
            continue
        image, target = item
        rgb = image_to_uint8(image)
        drawn = draw_instances(rgb, target["boxes"], target["masks"], target["labels"], dataset.class_names)
        path = out / f"{target['image_id']}_{Path(dataset.images[int(index)]['file_name']).stem}.png"
        Image.fromarray(drawn).save(path)
        print(f"{path}: {len(target['labels'])} instances, {rgb.shape[1]}x{rgb.shape[0]}")
    if unreadable:
        print(f"error: {unreadable} of {len(picks)} picked image(s) could not be read (named above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
