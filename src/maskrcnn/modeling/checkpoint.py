"""Load torchvision Mask R-CNN checkpoints into our MaskRCNN (same state_dict keys).

Legacy key names of old torchvision files (``rpn.head.conv.*``, ``mask_head.mask_fcn{i}.*``)
are renamed by the modules' own ``_load_from_state_dict`` hooks, so loading goes through
``nn.Module.load_state_dict`` and the key check happens after that renaming.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Layers whose shape depends on the number of classes; re-initialised when it differs.
CLASS_SPECIFIC_PREFIXES = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)


# ``init_from`` value that downloads torchvision's own COCO checkpoint through its weight enum.
TORCHVISION_COCO = "torchvision:maskrcnn_resnet50_fpn_coco"


def _read_state_dict(path: str | Path) -> OrderedDict[str, Tensor]:
    if str(path) == TORCHVISION_COCO:
        from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

        from maskrcnn.modeling.weights_download import fetch_state_dict

        # Downloads once into the torch hub cache (~170 MB); 37.9 box / 34.6 mask AP on COCO val2017.
        return OrderedDict(fetch_state_dict(
            MaskRCNN_ResNet50_FPN_Weights.COCO_V1, f"COCO Mask R-CNN weights (model.init_from={TORCHVISION_COCO})",
            "Or start without them: model.init_from=null (ImageNet backbone only, or from scratch with "
            "model.backbone.pretrained=false).",
        ))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_torchvision_checkpoint: no checkpoint file at {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"load_torchvision_checkpoint: {path} is neither a state_dict nor a dict with a 'model' state_dict"
        )
    state: OrderedDict[str, Tensor] = OrderedDict(obj)
    if hasattr(obj, "_metadata"):
        state._metadata = obj._metadata  # type: ignore[attr-defined]  # module versions, used by load hooks
    return state


def load_torchvision_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Load a torchvision COCO Mask R-CNN state dict into ``model``, strictly.

    Args:
        model: our MaskRCNN (any number of classes).
        path: file holding a raw state_dict or a dict with the state_dict under "model", or
            ``TORCHVISION_COCO`` to download torchvision's COCO_V1 weights.

    Returns:
        Names of the checkpoint entries skipped because the class count differs (their layers
        keep the model's fresh initialisation); empty when everything was loaded.

    Raises:
        KeyError: listing missing and unexpected keys when the architectures do not match.
    """
    state = _read_state_dict(path)
    own = model.state_dict()
    skipped = [
        k
        for k, v in state.items()
        if k.startswith(CLASS_SPECIFIC_PREFIXES) and k in own and tuple(own[k].shape) != tuple(v.shape)
    ]
    for k in skipped:
        del state[k]
    result = model.load_state_dict(state, strict=False)
    # BatchNorm2d fills a missing counter itself; FrozenBatchNorm2d drops a present one
    missing = [k for k in result.missing_keys if k not in skipped and not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise KeyError(
            f"load_torchvision_checkpoint: {path} does not match the model architecture.\n"
            f"  missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}"
        )
    # torchvision's v1 checkpoints were trained with FrozenBatchNorm eps=0 (torchvision itself
    # overwrites eps when it loads them); keep the numerics identical.
    from maskrcnn.modeling.backbone import set_frozen_bn_eps

    set_frozen_bn_eps(model, 0.0)
    if skipped:
        log.warning(
            "load_torchvision_checkpoint: class count differs from %s; re-initialised layers instead of loading: %s",
            path,
            skipped,
        )
    return skipped
