"""``inference.slice``: the settings of sliced inference (``inference/slicing.py``), checked in one place.

``SLICE_RULES`` is what each value may be; ``slice_options`` (predict) and
``training.config_types.CONFIG_TYPES`` (train, eval) both check against it, so a bad value is the same
one-line ``ConfigError`` naming the key everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from omegaconf import DictConfig, OmegaConf

from maskrcnn.errors import ConfigError

# A tile narrower than the FPN's coarsest stride (32 px) gives the top levels a single cell.
MIN_TILE = 32
MAX_TILE = 16384
MAX_OVERLAP = 0.9  # neighbouring tiles move by at least a tenth of a tile


def _int_in(low: int, high: int) -> Callable[[object], bool]:
    """A whole number (an integral float like 512.0 too) in [low, high]."""

    def ok(v: object) -> bool:
        whole = isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()
        return whole and low <= v <= high  # type: ignore[operator]

    return ok


def _fraction(low: float, high: float) -> Callable[[object], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high


# key below inference.slice -> (what it must be, in words; the check)
SLICE_RULES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "tile_size": (
        f"null (off) or a whole number of pixels in [{MIN_TILE}, {MAX_TILE}]",
        lambda v: v is None or _int_in(MIN_TILE, MAX_TILE)(v),
    ),
    "overlap": (f"a fraction of the tile in [0, {MAX_OVERLAP}]", _fraction(0.0, MAX_OVERLAP)),
    "full_image_pass": ("true or false", lambda v: isinstance(v, bool)),
    "merge_iou": ("a number in (0, 1]", lambda v: _fraction(0.0, 1.0)(v) and v != 0),
    "tiles_per_batch": ("a positive integer", _int_in(1, 1 << 20)),
}


@dataclass(frozen=True)
class SliceOptions:
    """Checked ``inference.slice`` values (sliced inference is on).

    Attributes:
        tile_size: tile side in image pixels; each tile enters the network at exactly this size
            (``model.transform``'s resize is skipped), the scale ``augmentation=tiles`` trains at.
        overlap: share of ``tile_size`` that neighbouring tiles have in common (at least; the last
            tile of a row or column is moved back to end at the image border).
        full_image_pass: also run the network on the whole image at the model's own scale
            (``model.transform``) for objects too large for the tiles; merged in.
        merge_iou: detections of one class from different passes (tiles, the full image) are one
            object when their masks, within the region both passes saw, reach this IoU.
        tiles_per_batch: tiles per forward pass.
    """

    tile_size: int
    overlap: float = 0.25
    full_image_pass: bool = True
    merge_iou: float = 0.5
    tiles_per_batch: int = 4

    @property
    def overlap_px(self) -> int:
        """The least number of pixels neighbouring tiles share along an axis."""
        return int(round(self.overlap * self.tile_size))


def slice_options(node: Mapping | DictConfig | None, prefix: str = "inference.slice") -> SliceOptions | None:
    """The checked options of an ``inference.slice`` node; None when slicing is off (no node, or
    ``tile_size: null``).

    Raises:
        ConfigError: ``<prefix>.<key>=<value> must be <what>`` for the first bad or unknown key.
    """
    if node is None:
        return None
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    values = {str(k): v for k, v in cast(dict, plain).items()}
    for key, value in values.items():
        if key not in SLICE_RULES:
            raise ConfigError(f"{prefix}.{key} is not an option (known: {', '.join(SLICE_RULES)})")
        what, ok = SLICE_RULES[key]
        if not ok(value):
            raise ConfigError(f"{prefix}.{key}={value!r} must be {what}")
        if key in ("tile_size", "tiles_per_batch") and value is not None:
            values[key] = int(value)
    if values.get("tile_size") is None:
        return None
    return SliceOptions(**values)
