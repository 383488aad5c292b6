"""Fetching torchvision weight files, with an actionable error when a node is offline.

Most HPC compute nodes have no internet. torchvision's weight enums download into the torch hub
cache on first use and fail deep inside model construction with ``URLError(gaierror(...))``;
:func:`fetch_state_dict` turns that into a :class:`WeightsDownloadError` that says which file
could not be fetched, where torch looks for it, and how to get it onto the node.
"""

from __future__ import annotations

import contextlib
import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torchvision.models import WeightsEnum

from maskrcnn.errors import WeightsDownloadError

# What a failed fetch raises: URLError / HTTPError / socket errors / SSL errors are all OSError
# (also a read-only or full cache directory); a connection dropped mid-file is an HTTPException.
DOWNLOAD_ERRORS = (OSError, http.client.HTTPException)


def cache_file(weights: WeightsEnum) -> Path:
    """Where ``torch.hub`` keeps (and first looks for) the file of ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def prefetch_command(weights: WeightsEnum) -> str:
    """A one-line shell command that downloads ``weights`` into the cache (run it where there is internet)."""
    enum_cls = type(weights)
    return (
        f'python -c "from {enum_cls.__module__} import {enum_cls.__name__} as W; '
        f'W.{weights.name}.get_state_dict(progress=True)"'
    )


def download_error_message(weights: WeightsEnum, purpose: str, alternative: str, error: BaseException) -> str:
    """Which file, the error, where torch looks for it, how to pre-fetch it, what to do instead."""
    return (
        f"Could not fetch the {purpose} ({type(weights).__name__}.{weights.name}):\n"
        f"  {weights.url}\n"
        f"  failed with {type(error).__name__}: {error}\n"
        f"torch looks for this file first at {cache_file(weights)} (torch.hub.get_dir()/checkpoints; "
        f"TORCH_HOME={os.environ.get('TORCH_HOME', '<unset, default ~/.cache/torch>')}).\n"
        "Compute nodes often have no internet: fetch it once where there is (e.g. a login node sharing "
        "the same TORCH_HOME) with\n"
        f"  {prefetch_command(weights)}\n"
        f"or copy the file to the path above. {alternative}"
    )


@contextlib.contextmanager
def explain_download_errors(weights: WeightsEnum | None, purpose: str, alternative: str) -> Iterator[None]:
    """Re-raise a failed download inside the block as a :class:`WeightsDownloadError`.

    Args:
        weights: the enum member being fetched (None: nothing is downloaded, nothing to explain).
        purpose: what the file is, e.g. "ImageNet weights of the resnet101 backbone".
        alternative: how to do without, e.g. "Or train from scratch with model.backbone.pretrained=false."
    """
    try:
        yield
    except DOWNLOAD_ERRORS as exc:
        if weights is None:
            raise
        raise WeightsDownloadError(download_error_message(weights, purpose, alternative, exc)) from exc


def fetch_state_dict(weights: WeightsEnum, purpose: str, alternative: str) -> dict:
    """``weights.get_state_dict()`` (from the cache, else downloaded) with the offline explanation."""
    with explain_download_errors(weights, purpose, alternative):
        return weights.get_state_dict(progress=True)
