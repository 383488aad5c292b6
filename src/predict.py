"""Predict with a checkpoint:  python src/predict.py ckpt_path=PATH input=DIR_OR_GLOB output=DIR

Unreadable inputs (also broken symbolic links, directories or FIFOs named like images) are skipped
and listed in ``<output>/skipped_inputs.jsonl``; the exit status is 1 only when no input could be
read (or on the first one with ``strict=true``). A bad config value (``batch_size``,
``score_thresh``, ``device``, ``output``, ...) ends the run with one ConfigError line naming the key,
before the model is loaded (``maskrcnn.inference.predict_options``).
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
