"""Export a Mask R-CNN for inference (ONNX or TorchScript, fixed image size) and check it against eager.

    python scripts/export.py --ckpt outputs/.../last.ckpt --format onnx --out model.onnx --height 800 --width 1088

Interface of the exported graph (see ``maskrcnn.inference.export_graph``): input "image"
Tensor[3, H, W] float32 RGB in [0, 1] at exactly the export size; outputs "boxes" [D, 4], "labels"
[D] int64, "scores" [D], "masks" [D, 1, H, W] probabilities, D dynamic. After exporting, the file is run once on the
example image and the max absolute difference to eager mode is printed per output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from maskrcnn.cli import exit_on_expected_errors
from maskrcnn.cli_args import positive_int
from maskrcnn.data.readers.image_io import image_to_tensor, load_rgb
from maskrcnn.errors import ExportError
from maskrcnn.inference.export_graph import FORMATS, example_image, export_model, max_abs_diff
from maskrcnn.inference.predict_images import load_checkpoint_model


def load_example(path: str, height: int, width: int) -> torch.Tensor:
    """An image file as Tensor[3, height, width] float32 in [0, 1] (bilinear resize to the export size)."""
    image = image_to_tensor(load_rgb(path))
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="training checkpoint written by src/train.py")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--out", required=True, help="output file (.onnx / .pt)")
    parser.add_argument("--height", type=positive_int, default=800, help="fixed input height")
    parser.add_argument("--width", type=positive_int, default=1088, help="fixed input width")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 16)")
    parser.add_argument("--example", default=None, help="image file to trace with (must give detections)")
    parser.add_argument(
        "--inference",
        choices=("eager", "fast"),
        default="eager",
        help="fast: export optimize_for_inference(net) (BatchNorm folded, channels_last)",
    )
    return parser.parse_args(argv)


@exit_on_expected_errors
def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    height, width = args.height, args.width
    if Path(args.out).is_dir():  # checked before the model loads, not as an IsADirectoryError after tracing
        raise ExportError(f"--out {args.out!r} is a folder; give the file to write (model.onnx / model.pt)")
    net, _ = load_checkpoint_model(args.ckpt, mask_format="prob")
    print(f"exporting the weights of {Path(args.ckpt).resolve()}")
    net = net.eval()
    if args.inference == "fast":
        from maskrcnn.inference.optimize.fast_inference import optimize_for_inference

        net = optimize_for_inference(net)  # exact options only: bf16 / compile are not for tracing
    example = load_example(args.example, height, width) if args.example else example_image((height, width))
    path = export_model(net, args.out, args.format, (height, width), opset=args.opset, example=example)
    diffs = max_abs_diff(net, path, example, args.format)
    print(f"exported {args.format} to {Path(path).resolve()} (input [3, {height}, {width}], fixed size)")
    for name, value in diffs.items():
        print(f"  max |exported - eager| {name:6s} = {value:.3g}")
    return diffs


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
