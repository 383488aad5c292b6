"""In-place class swaps for the inference copy: a module keeps its parameters, buffers and
state-dict keys and only changes which ``forward`` runs."""

from __future__ import annotations

from torch import nn


def swap_exact_type(module: nn.Module, old: type[nn.Module], new: type[nn.Module]) -> int:
    """Give every submodule of ``module`` (itself included) whose type is exactly ``old`` the class
    ``new``, a subclass of ``old`` that adds no state. Subclasses of ``old`` are left alone: they
    may override what ``new`` relies on. Returns how many were switched."""
    if not issubclass(new, old):
        raise TypeError(f"swap_exact_type: {new.__name__} must subclass {old.__name__}")
    switched = 0
    for child in module.modules():
        if type(child) is old:
            child.__class__ = new
            switched += 1
    return switched
