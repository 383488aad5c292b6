"""Train Mask R-CNN:  python src/train.py [group=option ...] [key=value ...]

Examples:
    python src/train.py                                   # synthetic shapes, small model, CPU
    python src/train.py model=resnet101_fpn loss=focal
    python src/train.py experiment=coco_r50_1x trainer.devices=8

Bad data, a bad config value or a missing file end the run with one message and exit status 1
(``maskrcnn.cli``); HYDRA_FULL_ERROR=1 shows the traceback as well.
"""

import hydra
from omegaconf import DictConfig

from maskrcnn.cli import exit_on_expected_errors
from maskrcnn.training.pipeline import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_expected_errors
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    # Returned for Hydra sweepers (e.g. Optuna) that optimise a single number.
    return metrics.get("val/segm_AP")


if __name__ == "__main__":
    main()
