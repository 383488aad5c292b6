"""Export the inference network to ONNX or TorchScript (both by tracing) and check it against eager.

The exported graph has ONE fixed interface (``ExportWrapper``):

    input   "image":  Tensor[3, H, W] float32 RGB in [0, 1]; H and W are FIXED at export time
    outputs "boxes":  Tensor[D, 4] float32, xyxy, pixels of the input image
            "labels": Tensor[D] int64, contiguous 1..K (0 = background never appears)
            "scores": Tensor[D] float32, descending (as MaskRCNN returns them)
            "masks":  Tensor[D, 1, H, W] float32 probabilities (bool when mask_format="binary")

The number of detections D is dynamic (data-dependent NMS and thresholds are real graph ops);
the image size is NOT: resizing, padding, anchors and mask pasting use the export size as
constants. ONNX Runtime rejects another size by itself; the TorchScript file is wrapped in a
scripted guard that raises. Export once per deployment size.

Tracing records the branches taken on the example image, so the example must yield at least one
proposal and one detection (else "empty" shortcuts, e.g. in NMS, would be baked in);
``export_onnx`` / ``export_torchscript`` check this and raise otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maskrcnn.errors import ExportError

INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")
FORMATS = ("onnx", "torchscript")


class ExportWrapper(nn.Module):
    """Runs a MaskRCNN (eval mode) on one image and returns plain tensors (see module docstring).

    Args:
        net: MaskRCNN with ``mask_format`` "prob" or "binary" (RLE dicts cannot be traced).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if getattr(net, "mask_format", None) not in ("prob", "binary"):
            raise ExportError(
                f"ExportWrapper: net.mask_format must be 'prob' or 'binary' to export, got "
                f"{getattr(net, 'mask_format', None)!r}"
            )
        self.net = net

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        Args:
            image: Tensor[3, H, W] float32 RGB in [0, 1].

        Returns:
            (boxes [D,4] float32 xyxy, labels [D] int64, scores [D] float32, masks [D,1,H,W]).
        """
        det = self.net([image])["detections"][0]
        return det["boxes"], det["labels"], det["scores"], det["masks"]


class _SizeGuard(nn.Module):
    """Scripted shell around the traced wrapper: a traced graph would silently run a wrong-size
    image with the export size's constants, so reject it with a clear error instead."""

    def __init__(self, traced: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.traced = traced
        self.height = height
        self.width = width

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] != self.height or image.shape[2] != self.width:
            raise RuntimeError(
                "exported Mask R-CNN: image must be a Tensor[3, "
                + str(self.height)
                + ", "
                + str(self.width)
                + "] (the export size), got "
                + str(image.shape)
            )
        return self.traced(image)


def example_image(image_size: tuple[int, int], seed: int = 0) -> Tensor:
    """A reproducible random image Tensor[3, H, W] float32 in [0, 1] to trace with."""
    height, width = image_size
    return torch.rand(3, int(height), int(width), generator=torch.Generator().manual_seed(seed))


def _prepare(net: nn.Module, image_size: tuple[int, int], example: Tensor | None) -> tuple[ExportWrapper, Tensor]:
    """Eval-mode wrapper + a checked example image on the net's device."""
    if len(image_size) != 2 or min(int(s) for s in image_size) < 1:
        raise ExportError(f"export: image_size must be (H, W) positive ints, got {image_size!r}")
    if any(getattr(m, "interpolation", None) == "bicubic" for m in net.modules()):
        # its sparse pooling matrix has a size of (#RoIs x bins) that tracing freezes, and ONNX has no sparse ops
        raise ExportError("export: bicubic RoIAlign cannot be exported (use roi_align.interpolation='bilinear')")
    height, width = int(image_size[0]), int(image_size[1])
    wrapper = ExportWrapper(net).eval()
    device = next(net.parameters()).device
    image = example_image((height, width)) if example is None else example
    if image.dim() != 3 or tuple(image.shape) != (3, height, width) or not image.is_floating_point():
        raise ExportError(f"export: example must be a float Tensor[3, {height}, {width}], got {tuple(image.shape)}")
    image = image.to(device=device, dtype=torch.float32)
    with torch.no_grad():
        num = wrapper(image)[0].shape[0]
    if num == 0:
        raise ExportError(
            "export: the example image gives no detections, so tracing would bake in the empty-result "
            "branches; pass an example image on which the model detects something (CLI: --example)"
        )
    return wrapper, image


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the expected tracer / exporter chatter: shape constants are by design (fixed image
    size, module docstring), and torch.jit's deprecation notices concern its future, not this file."""
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, UserWarning, DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
        with torch.no_grad():
            yield


def export_onnx(
    net: nn.Module, path: str | Path, image_size: tuple[int, int], opset: int = 17, example: Tensor | None = None
) -> Path:
    """Export ``ExportWrapper(net)`` to ONNX with the TorchScript-tracing exporter.

    Args:
        net: MaskRCNN with ``mask_format`` "prob" or "binary" and bilinear RoIAlign (the bicubic
            sampler's sparse matrix does not survive tracing).
        path: output ``.onnx`` file.
        image_size: (H, W), the fixed input size of the graph.
        opset: ONNX opset (>= 16 for RoIAlign's ``aligned`` attribute).
        example: Tensor[3, H, W] to trace with (default ``example_image``); must give detections.

    Returns:
        the written path. The outputs' first dimension is the dynamic axis "num_detections".
    """
    if opset < 16:
        raise ExportError(f"export_onnx: opset must be >= 16 (RoIAlign with 'aligned'), got {opset}")
    wrapper, image = _prepare(net, image_size, example)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        torch.onnx.export(
            wrapper,
            (image,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "num_detections"} for name in OUTPUT_NAMES},
        )
    return path


def export_torchscript(
    net: nn.Module, path: str | Path, image_size: tuple[int, int], example: Tensor | None = None
) -> Path:
    """Trace ``ExportWrapper(net)`` and save it as TorchScript (load with ``torch.jit.load`` after
    ``import torchvision``, which registers the nms / roi_align ops).

    Args: as ``export_onnx``.

    Returns:
        the written path. The saved module raises ``torch.jit.Error`` for an image of another size.
    """
    wrapper, image = _prepare(net, image_size, example)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        traced = torch.jit.trace(wrapper, (image,), check_trace=False)
        guarded = torch.jit.script(_SizeGuard(traced, int(image.shape[1]), int(image.shape[2])))
        torch.jit.save(guarded, str(path))
    return path


def export_model(
    net: nn.Module,
    path: str | Path,
    fmt: str,
    image_size: tuple[int, int],
    opset: int = 17,
    example: Tensor | None = None,
) -> Path:
    """``export_onnx`` or ``export_torchscript`` by ``fmt`` ("onnx" | "torchscript")."""
    if fmt == "onnx":
        return export_onnx(net, path, image_size, opset=opset, example=example)
    if fmt == "torchscript":
        return export_torchscript(net, path, image_size, example=example)
    raise ExportError(f"export: format must be one of {FORMATS}, got {fmt!r}")


@functools.lru_cache(maxsize=4)
def _onnx_session(path: str, mtime_ns: int) -> Any:
    """One onnxruntime CPU session per file version (building a session costs about a second)."""
    import onnxruntime

    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def run_exported(path: str | Path, image: Tensor, fmt: str | None = None) -> tuple[Tensor, ...]:
    """Run an exported file on one image (ONNX with onnxruntime on CPU, TorchScript with torch.jit.load).

    Args:
        path: ``.onnx`` or TorchScript file; ``fmt`` defaults to "onnx" for a ``.onnx`` suffix.
        image: Tensor[3, H, W] float32 at the export size.

    Returns:
        (boxes, labels, scores, masks) as CPU tensors (shapes: module docstring).
    """
    fmt = fmt or ("onnx" if Path(path).suffix == ".onnx" else "torchscript")
    if fmt == "onnx":
        session = _onnx_session(str(Path(path).resolve()), Path(path).stat().st_mtime_ns)
        outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.detach().cpu().float().numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)
    if fmt == "torchscript":
        import torchvision  # noqa: F401  (registers torchvision::nms / roi_align for the loaded graph)

        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu")
            return tuple(t.cpu() for t in module(image.detach().cpu().float()))
    raise ExportError(f"run_exported: format must be one of {FORMATS}, got {fmt!r}")


def max_abs_diff(net: nn.Module, path: str | Path, image: Tensor, fmt: str | None = None) -> dict[str, float]:
    """Max absolute difference per output between the exported file and eager ``net`` on ``image``.

    Raises:
        AssertionError naming both counts when the number of detections differs (then no
        element-wise comparison is meaningful).
    """
    with torch.no_grad():
        eager = ExportWrapper(net).eval()(image.to(next(net.parameters()).device))
    exported = run_exported(path, image, fmt)
    if exported[0].shape[0] != eager[0].shape[0]:
        raise AssertionError(
            f"exported model {path} gives {exported[0].shape[0]} detections, eager gives {eager[0].shape[0]}"
        )
    return {
        name: float((e.cpu().double() - x.double()).abs().max()) if e.numel() else 0.0
        for name, e, x in zip(OUTPUT_NAMES, eager, exported, strict=True)
    }
