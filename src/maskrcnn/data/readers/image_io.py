"""Decode any common image file into an 8-bit RGB array.

Handles EXIF orientation, palette / grayscale / RGBA / CMYK / 16-bit images and very large files.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import IO

import cv2
import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from maskrcnn.errors import DatasetError
from maskrcnn.file_kinds import path_problem

# PIL refuses images above ~179 Mpx as a "decompression bomb" guard. Training data is trusted input
# and high-resolution scans / aerial tiles (e.g. 10000x10000 = 100 Mpx) are legitimate; the resize
# transform downsizes them right after decoding. Raise the limit deliberately to 1 Gpx (PIL errors at
# twice the limit) rather than disabling it entirely, so absurd files still fail loudly.
_MAX_PIXELS = 1_000_000_000
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < _MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = _MAX_PIXELS

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to ``np.ndarray[H, W, 3] uint8``.

    16-bit data is scaled (65535 -> 255), never clipped: ``Image.convert("RGB")`` would saturate
    every value above 255 to white.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        gray = _scale_to_uint8(np.asarray(img).astype(np.float64), 65535.0)
    elif img.mode == "I":
        # 32-bit int mode is how PIL exposes 16-bit grayscale from some decoders (PNG, TIFF).
        arr = np.asarray(img).astype(np.float64)
        gray = _scale_to_uint8(arr, 255.0 if arr.max(initial=0) <= 255 else 65535.0)
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img).astype(np.float64))
        gray = _scale_to_uint8(arr, 1.0 if arr.max(initial=0) <= 1.0 else 255.0)
    else:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # avoids PIL's warning about palette transparency
        # Alpha is dropped (not composited), like torchvision.io.read_image(mode=RGB).
        return np.array(img.convert("RGB"), dtype=np.uint8)  # copy: writable for torch
    return np.repeat(gray[:, :, None], 3, axis=2)


def _scale_to_uint8(arr: np.ndarray, max_value: float) -> np.ndarray:
    return np.clip(np.rint(arr * (255.0 / max_value)), 0, 255).astype(np.uint8)


def _where(path: Path, image_id: int | None) -> str:
    return f"image file {str(path)!r}" + (f" (image id {image_id})" if image_id is not None else "")


def open_image(path: str | os.PathLike, image_id: int | None = None) -> Image.Image:
    """Open (header only) and EXIF-transpose lazily.

    Raises:
        DatasetError: naming the file and what it is when it is no readable image: missing, a directory,
            a symbolic link loop, a FIFO, a name too long (``maskrcnn.file_kinds.path_problem``), empty,
            or not decodable as an image.
    """
    path = Path(path)
    where = _where(path, image_id)
    problem = path_problem(path)
    if problem is not None:
        raise DatasetError(f"{where} {problem}")
    try:
        if path.stat().st_size == 0:
            raise DatasetError(f"{where} is empty (0 bytes)")
        return Image.open(path)
    except DatasetError:
        raise
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DatasetError(f"{where} cannot be read as an image: {exc}") from exc


def exif_size(img: Image.Image) -> tuple[int, int]:
    """(height, width) the image will have after EXIF orientation, without decoding pixels.

    PIL's ``getexif()`` decodes a whole PNG to look for an eXIf chunk after the pixel data; a PNG's
    chunk headers are walked here instead, which also finds a PNG that ends early.

    Raises:
        TruncatedImageError: a PNG that ends before its IEND chunk.
        Exception: what PIL raises on a damaged EXIF block.
    """
    width, height = img.size
    if img.format == "PNG" and isinstance(img, ImageFile.ImageFile):  # opened from a file: has ``fp``
        exif = Image.Exif()
        # the chunk walk runs always: it is what finds a truncated PNG
        data = (_png_exif_chunk(img.fp) if img.fp is not None else None) or img.info.get("exif")
        if data:
            exif.load(data)
    else:
        exif = img.getexif()
    orientation = exif.get(0x0112, 1)  # 0x0112 = Orientation tag
    if orientation in (5, 6, 7, 8):  # these orientations rotate by 90 degrees
        width, height = height, width
    return height, width


class TruncatedImageError(ValueError):
    """An image file ends before its format says it does (found from its headers, without decoding)."""


def _png_exif_chunk(fp: IO[bytes]) -> bytes | None:
    """The eXIf chunk of the PNG open as ``fp`` (as PIL stores it, ``b"Exif\\0\\0" + data``), found by seeking
    from chunk header to chunk header; None when there is none. ``fp`` is left where it was.

    Raises:
        TruncatedImageError: the file ends before the IEND chunk.
    """
    if fp is None:
        return None
    start, found = fp.tell(), None
    try:
        size = fp.seek(0, os.SEEK_END)
        fp.seek(8)  # the PNG signature
        while True:
            header = fp.read(8)
            if len(header) < 8:
                raise TruncatedImageError(f"truncated PNG: the file ({size} bytes) ends before its IEND chunk")
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IEND":
                return found
            if kind == b"eXIf":
                data = fp.read(length)
                found = b"Exif\x00\x00" + data
                fp.seek(4, os.SEEK_CUR)
            else:
                fp.seek(length + 4, os.SEEK_CUR)  # data and CRC
            if fp.tell() > size:
                raise TruncatedImageError(
                    f"truncated PNG: the file ({size} bytes) ends inside its {kind.decode('latin-1')!r} chunk"
                )
    finally:
        fp.seek(start)


def load_rgb(
    path: str | os.PathLike, image_id: int | None = None, at_least: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode an image file fully.

    Args:
        at_least: ``(short side, long side)`` the caller needs at least (it will shrink the image
            anyway). A JPEG at least twice that size is then decoded at 1/2, 1/4 or 1/8 scale by
            DCT scaling (PIL draft mode): a 10000x10000 photo costs a fraction of the time and
            memory. Each side becomes ``ceil(side / k)``; other formats are decoded at full size.
    Returns:
        image: ``np.ndarray[H, W, 3] uint8`` RGB, EXIF orientation applied.

    Raises:
        DatasetError: missing, zero-byte, corrupt or truncated file (message names file and id).
    """
    img = open_image(path, image_id)
    try:
        with img:
            if at_least is not None:
                short, long = at_least
                img.draft(None, (long, short) if img.width >= img.height else (short, long))
            img.load()  # forces full decode so truncation is detected here
            img = ImageOps.exif_transpose(img)
            return _to_rgb_array(img)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{_where(Path(path), image_id)} is corrupt or truncated: {exc}") from exc


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``np.ndarray[H, W, 3] uint8`` RGB -> ``Tensor[3, H, W] float32`` in [0, 1] (what the model takes)."""
    # One contiguous uint8 plane at a time (cv2.split de-interleaves with SIMD) converts to float
    # faster than transposing the HWC array or converting a strided view; same values.
    # cv2.split takes 1-4 uint8 channels and Mats of < 2**31 elements; anything else the plain way
    if image.ndim != 3 or not 1 <= image.shape[2] <= 4 or image.dtype != np.uint8 or image.size >= 2**31:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
    height, width, channels = image.shape
    out = torch.empty((channels, height, width), dtype=torch.float32)
    for channel, plane in zip(out, cv2.split(np.ascontiguousarray(image)), strict=True):
        channel.copy_(torch.from_numpy(plane))
    return out.div_(255.0)


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """``Tensor[3, H, W]`` float in [0, 1] -> ``np.ndarray[H, W, 3] uint8`` (for drawing / saving)."""
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def reduced_decode_size(height: int, width: int, decode_min_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """``(short, long)`` size a ``height`` x ``width`` file must at least be decoded at, for a
    pipeline whose output short / long sides never exceed ``decode_min_size``; None: decode at full
    size (no bound given, or the file is less than twice as large). ``load_rgb(at_least=...)``."""
    if decode_min_size is None:
        return None
    short, long = sorted((height, width))
    scale = min(decode_min_size[0] / short, decode_min_size[1] / long)
    return None if scale > 0.5 else (math.ceil(short * scale), math.ceil(long * scale))
