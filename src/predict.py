"""Predict with a checkpoint:  python src/predict.py ckpt_path=PATH input=DIR_OR_GLOB output=DIR

Unreadable inputs are skipped and listed in ``<output>/skipped_inputs.jsonl``; the exit status is 1
only when no input could be read (or on the first one with ``strict=true``).
"""

import hydra
from omegaconf import DictConfig

from maskrcnn.cli import exit_on_expected_errors
from maskrcnn.inference.predict_images import predict


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_expected_errors
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
