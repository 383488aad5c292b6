"""What a dataset reports about its annotation file: the annotations it skipped (a JSON-lines file
and one summary warning) and image records that share a file."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)


def report_skipped(
    skipped: list[dict], annotation_file: str, num_annotations: int, skipped_log: str | os.PathLike | None
) -> None:
    """Write ``skipped`` (one dict per skipped annotation or image: annotation_id, image_id,
    file_name, reason) to ``skipped_log`` as JSON lines, warn once with the count per reason, and
    warn loudly when fewer than 1 % of the ``num_annotations`` in the file were usable."""
    if skipped_log is not None:
        Path(skipped_log).parent.mkdir(parents=True, exist_ok=True)
        with open(skipped_log, "w", encoding="utf-8") as f:
            for item in skipped:
                f.write(json.dumps({"annotation_file": annotation_file, **item}) + "\n")
    where = f"; details in {skipped_log}" if skipped_log is not None else ""
    if skipped:
        counts = Counter(item["reason"] for item in skipped)
        summary = "; ".join(f"{n}x {reason}" for reason, n in counts.most_common(10))
        logger.warning("%s: skipped %d item(s) (%s)%s", annotation_file, len(skipped), summary, where)
    usable = num_annotations - sum(item["annotation_id"] is not None for item in skipped)
    if num_annotations and usable < 0.01 * num_annotations:
        logger.warning(
            "!!! %s: only %d of %d annotations (%.2f%%) passed the checks; the rest were skipped as unusable%s. "
            "Is this the right file?",
            annotation_file,
            usable,
            num_annotations,
            100.0 * usable / num_annotations,
            where,
        )


def warn_shared_files(shared_files: dict[str, list[int]], annotation_file: str) -> None:
    """Warn when file names are used by several image records (``{file name: image ids}``): each
    record is loaded with only its own annotations, so each trains on a share of the objects."""
    if shared_files:
        examples = "; ".join(f"{name!r}: image ids {ids}" for name, ids in list(shared_files.items())[:5])
        logger.warning(
            "%s: %d file name(s) are used by more than one image record, each of which is loaded "
            "with only its own annotations (%s)",
            annotation_file,
            len(shared_files),
            examples,
        )
