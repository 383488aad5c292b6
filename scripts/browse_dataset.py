"""Render ground truth AFTER the training augmentation, to eyeball a dataset and its pipeline.

python scripts/browse_dataset.py --images tests/data/nuts/images --ann tests/data/nuts/annotations.json \
    --augmentation default --num 8 --out outputs/browse
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from maskrcnn.cli import exit_on_expected_errors
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.draw import draw_instances
from maskrcnn.data.image_io import image_to_uint8
from maskrcnn.data.transforms import AUGMENTATIONS, build_transforms


@exit_on_expected_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="image folder")
    parser.add_argument("--ann", required=True, help="COCO annotation json")
    parser.add_argument("--augmentation", default="default", choices=AUGMENTATIONS)
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--lsj-size", type=int, default=1024, help="output square of --augmentation lsj")
    parser.add_argument("--num", type=int, default=8, help="number of images to render")
    parser.add_argument("--seed", type=int, default=0, help="which images are picked")
    parser.add_argument("--out", required=True, help="output folder for PNGs")
    args = parser.parse_args()

    transforms = build_transforms(
        args.augmentation, train=True, min_size=args.min_size, max_size=args.max_size, lsj_size=args.lsj_size
    )
    dataset = CocoInstanceDataset(args.images, args.ann, transforms=transforms)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    picks = rng.permutation(len(dataset))[: args.num]
    for index in picks:
        image, target = dataset[int(index)]
        rgb = image_to_uint8(image)
        drawn = draw_instances(rgb, target["boxes"], target["masks"], target["labels"], dataset.class_names)
        path = out / f"{target['image_id']}_{Path(dataset.images[int(index)]['file_name']).stem}.png"
        Image.fromarray(drawn).save(path)
        print(f"{path}: {len(target['labels'])} instances, {rgb.shape[1]}x{rgb.shape[0]}")


if __name__ == "__main__":
    main()
