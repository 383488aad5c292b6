"""Generate the synthetic shapes dataset: python scripts/generate_shapes.py --out data/shapes."""

import argparse
import time

from maskrcnn.cli_args import output_folder, positive_int
from maskrcnn.data.shapes import MIN_IMAGE_SIZE, generate_shapes


def image_size(text: str) -> int:
    value = positive_int(text)
    if value < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_IMAGE_SIZE} px, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", default="data/shapes", type=output_folder, help="output folder (train/, val/, meta.json)"
    )
    parser.add_argument("--train", type=positive_int, default=300, help="number of training images")
    parser.add_argument("--val", type=positive_int, default=50, help="number of validation images")
    parser.add_argument("--size", type=image_size, default=128, help="square image size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    args = parser.parse_args()
    start = time.perf_counter()
    paths = generate_shapes(args.out, args.train, args.val, args.size, args.seed, args.format)
    print(f"shapes dataset ready in {time.perf_counter() - start:.1f} s:")
    for split, p in paths.items():
        print(f"  {split}: images {p['image_dir']}  annotations {p['annotation_file']}")


if __name__ == "__main__":
    main()
