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

from torch import Tensor, nn

from maskrcnn.checkpoint_file import load_checkpoint_file
from maskrcnn.errors import CheckpointError
from maskrcnn.file_kinds import is_missing

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
        return OrderedDict(
            fetch_state_dict(
                MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
                f"COCO Mask R-CNN weights (model.init_from={TORCHVISION_COCO})",
                "Or start without them: model.init_from=null (ImageNet backbone only, or from scratch with "
                "model.backbone.pretrained=false).",
            )
        )
    path = Path(path)
    where = f"model.init_from={str(path)!r}"
    if is_missing(path):
        raise FileNotFoundError(f"{where} does not exist (a torchvision Mask R-CNN state_dict, or {TORCHVISION_COCO})")
    obj = load_checkpoint_file(path, "model.init_from", weights_only=True)
    if isinstance(obj, Mapping) and "run_config" in obj:
        raise CheckpointError(
            f"{where} is a checkpoint of src/train.py: resume it with ckpt_path= (same data); "
            "model.init_from takes torchvision Mask R-CNN weights"
        )
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{where} is a torch file but neither a state_dict nor a dict with a 'model' state_dict (from another "
            "project?); model.init_from takes torchvision Mask R-CNN weights"
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
        CheckpointError: the file is not a state dict (:mod:`maskrcnn.checkpoint_file`), or was built
            for another architecture (the first missing, unexpected or mismatching layers).
    """
    state = _read_state_dict(path)
    own = model.state_dict()
    if not set(state) & set(own):
        raise CheckpointError(
            f"model.init_from={str(path)!r} shares no layer name with this model (weights of "
            "another project?); model.init_from takes torchvision Mask R-CNN weights"
        )
    skipped = [
        k
        for k, v in state.items()
        if k.startswith(CLASS_SPECIFIC_PREFIXES) and k in own and tuple(own[k].shape) != tuple(v.shape)
    ]
    for k in skipped:
        del state[k]
    where = f"model.init_from={str(path)!r}"
    try:
        result = model.load_state_dict(state, strict=False)  # key renaming hooks of old files run here
    except RuntimeError as exc:  # size mismatches (strict=False still raises on them)
        shapes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        shown = "; ".join(shapes[:3]) + (f"; and {len(shapes) - 3} more" if len(shapes) > 3 else "")
        raise CheckpointError(f"{where} was built for another architecture than this run's model: {shown}") from exc
    # BatchNorm2d fills a missing counter itself; FrozenBatchNorm2d drops a present one
    missing = [k for k in result.missing_keys if k not in skipped and not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        problems = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(
            f"{where} was built for another architecture than this run's model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys): {shown}"
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
