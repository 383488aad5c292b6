"""Predict with a checkpoint:  python src/predict.py ckpt_path=PATH input=DIR_OR_GLOB output=DIR"""

import hydra
from omegaconf import DictConfig

from maskrcnn.predict import predict


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
