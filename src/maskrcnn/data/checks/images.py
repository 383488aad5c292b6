"""Unreadable image files: the policy options, the pre-training report and the list of skipped files.

Two moments can find a bad image file (missing, zero bytes, not an image, truncated, size differs
from the json):
- the check the data module runs in ``setup`` BEFORE training (``check_images``: ``header`` opens
  every file and compares its size with the json, ``full`` also decodes the pixels);
- ``__getitem__``, for a file that passed a header check but fails to decode (e.g. truncated JPEG).
With ``bad_images="skip"`` both are dropped and listed, one JSON line per image, in
``skipped_images_{split}.jsonl``; with ``bad_images="raise"`` the pre-training check raises a
``DatasetError`` naming the first culprits and the total count.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from maskrcnn.data.readers.image_io import exif_size, load_rgb, open_image
from maskrcnn.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("raise", "skip")
CHECK_MODES = ("none", "header", "full")


def validate_options(bad_images: str, check_images: str) -> None:
    """Reject unknown option values, naming the config key (``data.bad_images`` / ``data.check_images``)."""
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"data.bad_images={bad_images!r}: expected one of {BAD_IMAGE_POLICIES}")
    if check_images not in CHECK_MODES:
        raise ConfigError(f"data.check_images={check_images!r}: expected one of {CHECK_MODES}")


def rejection_message(bad: list[dict], split: str, annotation_file: str, limit: int = 5) -> str:
    """Message of the ``bad_images="raise"`` error: total count, then the first ``limit`` culprits."""
    lines = [
        f"{len(bad)} unreadable image(s) in the {split} split ({annotation_file}); fix or remove them, "
        "or set data.bad_images=skip to train without them (they are then listed in "
        f"skipped_images_{split}.jsonl in the run directory):"
    ]
    lines += [f"  image id {b['image_id']} ({b['file_name']!r}): {b['reason']}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


def summarise(bad: list[dict]) -> str:
    """``"2x does not exist; 1x is empty (0 bytes)"``: reasons without the (per-file) path prefix."""
    counts = Counter(_short_reason(b["reason"]) for b in bad)
    return "; ".join(f"{n}x {reason}" for reason, n in counts.most_common())


def _short_reason(reason: str) -> str:
    # Messages read "image file '<path>' (image id N) <what is wrong>": keep what is wrong.
    marker = ") "
    cut = reason.find(marker)
    return reason[cut + len(marker) :].split(":")[0] if reason.startswith("image file") and cut >= 0 else reason


class SkippedImageLog:
    """JSON-lines file with one line per skipped image: annotation_file, image_id, file_name,
    reason, stage (``"check"`` = found before training, ``"load"`` = found by ``__getitem__``).

    DataLoader workers append to it (small single ``write`` calls in append mode, so lines from
    several processes do not interleave); an image already listed is not listed again, so a bad
    file met every epoch still has one line. ``path=None`` keeps nothing on disk.
    """

    def __init__(self, path: str | os.PathLike | None, annotation_file: str) -> None:
        self.path = None if path is None else Path(path)
        self.annotation_file = annotation_file
        self._seen: set[int] = set()

    def _line(self, record: dict, stage: str) -> str:
        return json.dumps({"annotation_file": self.annotation_file, **record, "stage": stage}) + "\n"

    def start(self, records: list[dict], write: bool = True) -> None:
        """(Re)create the file with the images found by the pre-training check (``write=False``:
        only remember them; another process writes the same file)."""
        self._seen = {int(r["image_id"]) for r in records}
        if self.path is None or not write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(self._line(r, "check") for r in records)

    def listed_ids(self) -> set[int]:
        """Image ids already in the file (written by any process)."""
        if self.path is None or not self.path.is_file():
            return set(self._seen)
        ids = set(self._seen)
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    ids.add(int(json.loads(line)["image_id"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash must not stop training
        return ids

    def append(self, record: dict) -> bool:
        """List an image found unreadable while loading; False when it was already listed."""
        image_id = int(record["image_id"])
        if image_id in self.listed_ids():
            self._seen.add(image_id)
            return False
        self._seen.add(image_id)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(self._line(record, "load"))
        return True

    def count(self) -> int:
        """Number of distinct images listed so far (all processes)."""
        return len(self.listed_ids())


def apply_policy(bad: list[dict], policy: str, split: str, annotation_file: str) -> None:
    """Raise for ``policy="raise"``; otherwise log the count of images that will be skipped."""
    if not bad:
        return
    if policy == "raise":
        raise DatasetError(rejection_message(bad, split, annotation_file))
    logger.warning(
        "%s split: skipping %d unreadable image(s) found before training (%s); first: image id %s (%r)",
        split,
        len(bad),
        summarise(bad),
        bad[0]["image_id"],
        bad[0]["file_name"],
    )


def size_message(path: Path, img: dict, annotation_file: str, h: int, w: int) -> str:
    """Why an image file of ``h`` x ``w`` pixels does not match its json record ``img``."""
    return (
        f"image file {str(path)!r} (image id {img['id']}) is {w}x{h} after EXIF orientation but "
        f"{annotation_file!r} says {img['width']}x{img['height']}"
    )


def probe_image(path: Path, img: dict, annotation_file: str, full_decode: bool) -> str | None:
    """Why the file of json record ``img`` cannot be trained on (None: it can): it does not open,
    its header (or, ``full_decode``, its pixels) cannot be read, or its size differs from the json."""
    try:
        with open_image(path, img["id"]) as pil:  # the header check (a truncated file), always
            h, w = exif_size(pil)
        if full_decode:  # and every pixel: a decoder may accept a file cut after its last pixel
            h, w = load_rgb(path, img["id"]).shape[:2]
        if (h, w) != (img["height"], img["width"]):
            raise DatasetError(size_message(path, img, annotation_file, h, w))
    except DatasetError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001  any decoder error on one file is a skip naming it, not a crash
        return f"image file {str(path)!r} (image id {img['id']}) cannot be read: {exc or type(exc).__name__}"
    return None


def check_image_files(dataset: Any, split: str, check: str, policy: str, write_log: bool = True) -> None:
    """Before training: reject (``policy="raise"``) or drop and list (``"skip"``) the unreadable image
    files of ``dataset`` (a ``CocoInstanceDataset``), found by ``check`` (``header`` | ``full`` |
    ``none``); ``write_log=False`` (DDP ranks > 0) leaves the list to the first rank."""
    if check == "none":
        return
    bad = dataset.check_images(full_decode=check == "full")
    apply_policy(bad, policy, split, dataset.annotation_file)
    dataset.exclude_images(bad, write_log=write_log)
    if not len(dataset):
        raise DatasetError(
            f"{split} split ({dataset.annotation_file}): no readable image left after skipping {len(bad)}"
        )
