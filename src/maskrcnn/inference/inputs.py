"""predict's ``input=``: which files it names, which of them cannot be read, where each overlay goes,
and how a file is decoded no larger than the model needs (``load_for_model``).

Every mode (a folder, a glob pattern, a single file) accepts the same suffixes (``IMAGE_SUFFIXES``,
case-insensitive). An entry with an image suffix that is not a readable regular file (a broken
symbolic link, a symbolic link loop, a directory, a FIFO / socket / device) is kept in the list
with its reason, so that predict reports it as a skipped input instead of dropping it silently.
Entries without an image suffix are counted and logged, not listed; a folder's subfolders are not
searched (a ``**`` glob does that).
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from maskrcnn.data.readers.image_io import exif_size, load_rgb, open_image
from maskrcnn.errors import ConfigError, DatasetError
from maskrcnn.file_kinds import path_problem

log = logging.getLogger(__name__)

# A GIF is read as its first frame (image_io.load_rgb); one list for every input mode.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class InputList:
    """What ``input=`` names.

    Attributes:
        files: the entries with an image suffix, sorted; includes those in ``problems``.
        problems: ``{path: reason}`` for entries that cannot be read as files (the reason names the path).
        root: the folder the files are named relative to (the folder, the glob's literal prefix, or
            the single file's folder); ``overlay_names`` mirrors the paths below it.
        ignored: how many non-directory entries were passed over for their suffix.
    """

    files: list[Path]
    problems: dict[Path, str] = field(default_factory=dict)
    root: Path = Path(".")
    ignored: int = 0


def _glob_root(spec: str) -> Path:
    """The literal folder a glob pattern starts with: ``/data/**/*.jpg`` -> ``/data``."""
    literal: list[str] = []
    for part in Path(spec).parts[:-1]:
        if glob.has_magic(part):
            break
        literal.append(part)
    return Path(*literal) if literal else Path(".")


def entry_problem(path: Path) -> str | None:
    """None for a regular file (or a symbolic link to one), else why ``path`` cannot be read as one
    (``maskrcnn.file_kinds.path_problem``, prefixed with the path)."""
    problem = path_problem(path)
    return None if problem is None else f"image file {str(path)!r} {problem}"


def list_inputs(spec: str) -> InputList:
    """The entries of a folder (not its subfolders), of a glob pattern (``**`` recurses), or one file.

    Raises:
        ConfigError: ``input`` is a single file without an image suffix.
        FileNotFoundError: nothing with an image suffix was found (the message names ``input``).
    """
    path = Path(spec)
    if path.is_dir():
        root, candidates = path, sorted(path.iterdir())
    elif path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ConfigError(f"input={spec!r} is a file without an image suffix ({', '.join(IMAGE_SUFFIXES)})")
        root, candidates = path.parent, [path]
    else:  # a glob pattern, or a path that is neither a file nor a folder (a broken link, a FIFO, ...)
        root, candidates = _glob_root(spec), sorted(Path(p) for p in glob.glob(spec, recursive=True))
    found, subfolders = InputList(files=[], root=root), 0
    for entry in candidates:
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            is_dir = entry.is_dir()
            found.ignored += not is_dir  # folders are not files to report
            subfolders += is_dir
            continue
        found.files.append(entry)
        problem = entry_problem(entry)
        if problem is not None:
            found.problems[entry] = problem
    if found.ignored:
        log.info("input=%s: ignoring %d file(s) without an image suffix", spec, found.ignored)
    hint = ""
    if path.is_dir() and subfolders:
        hint = f"; its {subfolders} subfolder(s) are not searched: input='{spec.rstrip('/')}/**/*' includes them"
        if found.files:
            log.warning("input=%s%s", spec, hint)
    if not found.files:
        raise FileNotFoundError(f"input={spec!r}: no image files ({', '.join(IMAGE_SUFFIXES)}) found{hint}")
    return found


def overlay_names(files: list[Path], root: Path) -> dict[Path, str]:
    """The overlay file of each input, relative to the output folder (``/`` separated), unique.

    The input's path below ``root`` with its suffix replaced by ``.png`` (``a/y.jpg`` ->
    ``a/y.png``). Inputs that would share a name (``x.jpg`` and ``x.png``, compared ignoring case for
    case-insensitive file systems) keep their suffix (``x.jpg.png``, ``x.png.png``), and so does an
    input whose overlay would be a file where another overlay needs a folder (``z.jpg`` next to
    ``z.png/inner.jpg``: ``z.jpg.png``); a name still taken then gets ``~2``, ``~3``, ... in input
    order, so the names depend on the input list only.
    """
    rel = {f: Path(os.path.relpath(f, root)).as_posix() for f in files}
    # a pattern like DIR/*/../*.jpg can name files outside its literal prefix: never write outside output
    rel = {f: (Path(f).name if r.split("/")[0] == ".." else r) for f, r in rel.items()}
    plain = {f: str(Path(r).with_suffix(".png").as_posix()) for f, r in rel.items()}
    counts: dict[str, int] = {}
    for name in plain.values():
        counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
    # folders the overlays go into (a/y.png needs a/): an overlay file of that name would block them
    folders = {parent.as_posix().casefold() for r in rel.values() for parent in Path(r).parents if parent != Path(".")}
    names, taken = {}, set()
    for f in files:
        clash = counts[plain[f].casefold()] > 1 or plain[f].casefold() in folders
        name = rel[f] + ".png" if clash else plain[f]
        stem, n = name[: -len(".png")], 1
        while name.casefold() in taken or name.casefold() in folders:
            n += 1
            name = f"{stem}~{n}.png"
        taken.add(name.casefold())
        names[f] = name
    return names


def load_for_model(path: Path, min_size: int, max_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` no larger than needed for a model resizing to ``min_size`` / ``max_size``.

    Returns:
        image: ``np.ndarray[h, w, 3] uint8`` RGB, at least the model's input size when the file is
            larger (then a reduced copy), else the full image; EXIF orientation applied.
        original_size: ``(H, W)`` of the full image after EXIF orientation.

    Raises:
        DatasetError: missing, empty, corrupt, truncated or not an image.
    """
    with open_image(path) as header:
        try:
            original = exif_size(header)
        except Exception as exc:  # a broken EXIF block
            raise DatasetError(f"image file {str(path)!r}: cannot read its header: {exc}") from exc
    image = load_rgb(path, at_least=(min_size, max_size))  # JPEG: DCT-scaled decode
    h, w = image.shape[:2]
    # The model will scale by s; shrink by the largest integer factor k <= 1/s, still 8-bit
    # (box filter), so the float copies the model makes are of about its input size.
    scale = min(min_size / min(h, w), max_size / max(h, w))
    factor = int(1.0 / scale) if scale < 1.0 else 1
    if factor >= 2:
        image = np.asarray(Image.fromarray(image).reduce(factor))
    return image, original
