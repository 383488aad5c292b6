"""COCO box + mask AP of a checkpoint:  python src/eval.py ckpt_path=PATH [overrides]

Model and data are rebuilt from the config stored in the checkpoint; overrides given here apply on
top of it, e.g. ``data.val.annotation_file=... data.val.image_dir=...`` (another validation set)
or ``model.roi_heads.detections_per_img=300``.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from maskrcnn.cli import exit_on_expected_errors
from maskrcnn.training.pipeline import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@exit_on_expected_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg, overrides=list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    main()
