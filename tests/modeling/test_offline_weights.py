"""Offline nodes: a torchvision weight file that cannot be downloaded gives an error saying which
file, where torch looks for it, how to pre-fetch it, and how to do without (no network in tests:
the download itself is replaced by one that fails like a node without DNS)."""

from __future__ import annotations

import re
import socket
import urllib.error

import pytest
import torch.hub

from helpers.config import compose
from maskrcnn.cli import error_message, expected_error
from maskrcnn.errors import WeightsDownloadError
from maskrcnn.modeling.backbone import build_backbone
from maskrcnn.modeling.build import build_mask_rcnn
from maskrcnn.modeling.checkpoint import TORCHVISION_COCO
from maskrcnn.training.pipeline import train


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache and no network; returns the cache's checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    attempts = []

    def no_network(url, dst, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch_home" / "hub" / "checkpoints", attempts


def _prefetch_code(message: str) -> str:
    return re.search(r'python -c "(.*)"', message).group(1)


def test_backbone_weights_error_says_what_where_and_how(offline):
    cache, attempts = offline
    with pytest.raises(WeightsDownloadError) as info:
        build_backbone("resnet18", pretrained=True)
    message = str(info.value)
    assert attempts == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert attempts[0] in message and "Name or service not known" in message
    assert f"torch looks for this file first at {cache / 'resnet18-f37072fd.pth'}" in message
    assert f"TORCH_HOME={cache.parents[1]}" in message
    assert "model.backbone.pretrained=false" in message
    # The pre-fetch command names the right weights: run offline, it attempts the same download.
    with pytest.raises(urllib.error.URLError):
        exec(_prefetch_code(message))
    assert attempts[1] == attempts[0]


def test_torchvision_init_from_error_names_the_key(offline):
    _, attempts = offline
    with pytest.raises(WeightsDownloadError) as info:
        build_mask_rcnn(2, {"name": "resnet18", "pretrained": False}, init_from=TORCHVISION_COCO)
    message = str(info.value)
    assert "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in attempts[0] and attempts[0] in message
    assert f"model.init_from={TORCHVISION_COCO}" in message and "model.init_from=null" in message
    with pytest.raises(urllib.error.URLError):
        exec(_prefetch_code(message))


def test_train_on_an_offline_node_ends_with_that_message(tiny, offline, shapes_dir, tmp_path):
    cfg = compose([*tiny, "model.backbone.pretrained=true"], output_dir=tmp_path, data_dir=shapes_dir)
    with pytest.raises(Exception) as info:  # Hydra's instantiate wraps it ...
        train(cfg)
    found = expected_error(info.value)  # ... and the entry points unwrap it for the one-line message
    assert isinstance(found, WeightsDownloadError)
    assert error_message(found).startswith("WeightsDownloadError: Could not fetch the ImageNet weights of the resnet18")
