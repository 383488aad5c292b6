"""Config values that may be ``auto``: filled in from the training data before the model is built.

``model.rpn.anchor_sizes: auto`` takes the dataset-fit report's suggestion (``maskrcnn.data.fit.report``:
the best doubling-per-level anchor set for the objects at the training scale, or the standard
32-512 px set when no doubling set does better), as YOLOv5's autoanchor does. The log line says
whether the choice fits with the report's own numbers, and warns when it does not. The resolved value replaces
``auto`` in the config before anything is built, so it is what the run summary prints, what the
checkpoint stores and what eval / predict rebuild. Part of the top-level pipeline (reads ``cfg``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

# What ``auto`` starts from and falls back to: torchvision's / detectron2's FPN anchors.
STANDARD_ANCHORS = [[32], [64], [128], [256], [512]]


def resolve_auto_settings(cfg: DictConfig, datamodule: Any) -> None:
    """Replace ``auto`` values of ``cfg`` in place (a no-op when there are none)."""
    if cfg.model.rpn.get("anchor_sizes") != "auto":
        return
    from maskrcnn.training.run_summary import describe_config, fit_report

    train_file = Path(datamodule.train_spec["annotation_file"])
    if not train_file.is_file():  # a generated dataset (data=shapes) is written by prepare_data
        datamodule.prepare_data()
    report = fit_report(describe_config(cfg), train_file, anchor_sizes=STANDARD_ANCHORS)
    chosen = report.suggestion.anchor_sizes or STANDARD_ANCHORS
    chosen = [[int(s) if float(s).is_integer() else float(s) for s in level] for level in chosen]
    with open_dict(cfg):
        cfg.model.rpn.anchor_sizes = chosen
    suggestion = report.suggestion
    why = suggestion.verdict("the standard anchors")
    if suggestion.fits:
        log.info("model.rpn.anchor_sizes=auto -> %s (%s; dataset-fit report of %s)", chosen, why, train_file)
    else:  # the same numbers as the report: never "fits" when it says otherwise
        hint = (
            f"; the report suggests a larger scale: model.transform.min_size={suggestion.min_size} "
            f"model.transform.max_size={suggestion.max_size}"
            if suggestion.min_size is not None
            else ""
        )
        log.warning("model.rpn.anchor_sizes=auto -> %s; %s (dataset-fit report of %s)%s", chosen, why, train_file, hint)
    from maskrcnn.data.fit.report import box_warnings

    for name, split in report.splits.items():  # what the choice rests on, even with dataset_report=false
        for warning in box_warnings(name, split):
            log.warning("model.rpn.anchor_sizes=auto: %s", warning.message)
