"""Input validation shared by the loss modules.

Losses receive sub-dicts of ``LossInputs`` (``modeling/structures.py``). A malformed dict is a bug in
the network code, so these helpers raise errors that name the loss, the branch and the key
instead of letting a broadcasting rule or an empty ``mean`` silently produce a wrong number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor


def require_tensors(branch: Mapping[str, object], keys: Sequence[str], where: str) -> list[Tensor]:
    """Return ``branch[key]`` for every key, raising if one is missing or not a tensor.

    Args:
        branch: one sub-dict of LossInputs ("rpn", "roi" or "mask").
        keys: the keys the calling loss reads.
        where: "<class>[<branch>]" (or the function name) used in the error message.
    """
    if not isinstance(branch, Mapping):
        raise TypeError(f"{where}: expected a dict of tensors, got {type(branch).__name__}")
    missing = [k for k in keys if k not in branch]
    if missing:
        raise KeyError(f"{where}: missing key(s) {missing}; available keys: {sorted(branch)}")
    out = []
    for k in keys:
        value = branch[k]
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}: key '{k}' must be a Tensor, got {type(value).__name__}")
        out.append(value)
    return out


def require_same_shape(a: Tensor, b: Tensor, names: tuple[str, str], where: str) -> None:
    """Raise if ``a`` and ``b`` differ in shape (no broadcasting between prediction and target)."""
    if a.shape != b.shape:
        raise ValueError(
            f"{where}: '{names[0]}' has shape {tuple(a.shape)} but '{names[1]}' has shape "
            f"{tuple(b.shape)}; they must match exactly"
        )


def require_ndim(t: Tensor, ndim: int, name: str, where: str, trailing: tuple[int, ...] = ()) -> None:
    """Raise unless ``t`` has ``ndim`` dims and its last dims equal ``trailing``."""
    if t.dim() != ndim or (trailing and tuple(t.shape[-len(trailing) :]) != trailing):
        want = "[" + ", ".join(["*"] * (ndim - len(trailing)) + [str(d) for d in trailing]) + "]"
        raise ValueError(f"{where}: '{name}' must have shape {want}, got {tuple(t.shape)}")


def check_reduction(reduction: str, where: str) -> None:
    """Raise unless ``reduction`` is one of "none", "mean", "sum"."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{where}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
