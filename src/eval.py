"""COCO box + mask AP of a checkpoint:  python src/eval.py ckpt_path=PATH [same data/model options as training]"""

import hydra
from omegaconf import DictConfig

from maskrcnn.training.pipeline import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
