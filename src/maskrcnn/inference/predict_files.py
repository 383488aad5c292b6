"""What ``src/predict.py`` writes into its output folder, written so that a run killed late keeps
most of its results: ``predictions.json`` (COCO results) and ``images.json`` rewritten atomically at
most every ``SAVE_EVERY_S`` seconds and at the end, ``skipped_inputs.jsonl`` appended per skip."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

# predictions.json is rewritten at most this often during a run (and always at the end, even
# after an error), so that a run killed late keeps most of its results.
SAVE_EVERY_S = 60.0


class PredictionFiles:
    """predictions.json + images.json (rewritten atomically), skipped_inputs.jsonl (appended) and
    the overlay file name of each input (``inputs.overlay_names``)."""

    def __init__(self, out_dir: Path, overlays: dict[Path, str]) -> None:
        self.out_dir = out_dir
        self.overlays = overlays
        self.results: list[dict] = []
        self.images: list[dict] = []
        self.skipped: list[dict] = []
        self.skipped_path = out_dir / "skipped_inputs.jsonl"
        self.skipped_path.unlink(missing_ok=True)  # a list from an earlier run into this folder
        self._saved_at = time.monotonic()

    def skip(self, path: Path, error: Exception) -> None:
        entry = {"file": str(path), "reason": str(error)}
        self.skipped.append(entry)
        with open(self.skipped_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        log.warning("Skipping unreadable input %s: %s", path, error)

    def _write(self, name: str, obj: object, indent: int | None = None) -> None:
        tmp = self.out_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=indent))
        os.replace(tmp, self.out_dir / name)  # readers never see a half-written file

    def save(self, force: bool = False) -> None:
        if force or time.monotonic() - self._saved_at > SAVE_EVERY_S:
            self._write("predictions.json", self.results)
            self._write("images.json", self.images, indent=1)
            self._saved_at = time.monotonic()
