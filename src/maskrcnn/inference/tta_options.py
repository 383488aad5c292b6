"""The ``tta`` config (``conf/tta/{none,flip,flip_scales}.yaml``) checked, and turned into views.

Eval and predict call :func:`check_tta_config` before the model is loaded (a bad value is one
ConfigError naming the key; ``TTA_RULES`` are also eval's rules in ``training.config_types``), and
:func:`build_tta` once the model is there, because the views' sizes follow the model's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from omegaconf import OmegaConf
from torch import nn

from maskrcnn.errors import ConfigError
from maskrcnn.inference.tta import TestTimeAugmentation, TTAView

MAX_SCALE = 4  # largest factor of the model's own sizes in tta.scales
MAX_PIXELS = 16384  # as config_types.PIXELS

SCALES_WHAT = f"a non-empty list of values each a finite number > 0, <= {MAX_SCALE}"
PIXELS_WHAT = f"a positive integer (at most {MAX_PIXELS} pixels)"


@dataclass(frozen=True)
class TTASettings:
    """The checked ``tta`` values.

    Attributes:
        flip: every size is also run flipped left-right.
        scales: factors of the model's own shortest-edge and longest-edge sizes, one view each.
        min_sizes: shortest-edge sizes in pixels; when set they replace ``scales``.
        max_size: the longest-edge cap of every view in pixels; None: the model's own, times the factor.
    """

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    min_sizes: tuple[int, ...] | None = None
    max_size: int | None = None

    def views(self, model_min: int, model_max: int) -> list[TTAView]:
        """The views for a model that resizes to ``model_min`` / ``model_max``; sizes first, each
        unflipped then flipped; views that come out equal (factors rounding alike) run once."""
        if self.min_sizes is not None:
            sizes = [(s, self.max_size or model_max) for s in self.min_sizes]
        else:
            sizes = [(max(1, round(f * model_min)), self.max_size or max(1, round(f * model_max))) for f in self.scales]
        flips = (False, True) if self.flip else (False,)
        return list(dict.fromkeys(TTAView(low, high, flip) for low, high in sizes for flip in flips))


def _is_int(value: object) -> TypeGuard[float]:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )


def _is_pixels(value: object) -> bool:
    return _is_int(value) and 1 <= value <= MAX_PIXELS


def _is_scale(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= MAX_SCALE
    )


def _non_empty_list(value: object) -> TypeGuard[list | tuple]:
    return isinstance(value, (list, tuple)) and len(value) > 0


# key below tta -> (what it must be, in words; the check). ``training.config_types`` checks eval's
# config against the same rules, so a bad value is the same one-line ConfigError in eval and predict.
TTA_RULES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "flip": ("true or false", lambda v: isinstance(v, bool)),
    "scales": (SCALES_WHAT, lambda v: _non_empty_list(v) and all(_is_scale(s) for s in v)),
    "min_sizes": (
        f"null, or a non-empty list of values each {PIXELS_WHAT}",
        lambda v: v is None or (_non_empty_list(v) and all(_is_pixels(s) for s in v)),
    ),
    "max_size": (f"null, or {PIXELS_WHAT}", lambda v: v is None or _is_pixels(v)),
}


def check_tta_config(node: Any) -> TTASettings:
    """``cfg.tta`` (None or absent: no TTA) -> :class:`TTASettings`.

    Raises:
        ConfigError: ``tta.<key>=<value> must be ...`` for the first bad value.
    """
    if node is None:
        return TTASettings()
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    assert isinstance(values, dict)  # a config group: a mapping
    defaults = {"flip": False, "scales": [1.0], "min_sizes": None, "max_size": None}
    checked = {key: values.get(key, default) for key, default in defaults.items()}
    for key, value in checked.items():
        what, ok = TTA_RULES[key]
        if not ok(value):
            raise ConfigError(f"tta.{key}={value!r} must be {what}")
    min_sizes, max_size = checked["min_sizes"], checked["max_size"]
    return TTASettings(
        flip=checked["flip"],
        scales=tuple(float(s) for s in checked["scales"]),
        min_sizes=None if min_sizes is None else tuple(int(s) for s in min_sizes),
        max_size=None if max_size is None else int(max_size),
    )


def check_tta_without_slicing(settings: TTASettings, slicing: object | None) -> None:
    """Test-time augmentation and sliced inference (``inference.slice``) are alternatives: each
    resizes the image its own way, so combining them has no single meaning.

    Raises:
        ConfigError: when both are on.
    """
    if slicing is not None and settings != TTASettings():
        raise ConfigError(
            "tta=... and inference.slice.tile_size=... cannot be combined: choose one "
            "(tta=none, or inference.slice.tile_size=null)"
        )


def build_tta(settings: TTASettings, net: nn.Module) -> TestTimeAugmentation | None:
    """The TTA wrapper of ``net`` (an eval-mode MaskRCNN or its inference copy), or None when the
    settings give only the model's own view: then the network runs as it is, without the wrapper."""
    transform: Any = net.transform  # an ImageTransform
    views = settings.views(int(transform.min_size[-1]), int(transform.max_size))
    tta = TestTimeAugmentation(net, views)
    return None if views == [tta.plain] else tta
