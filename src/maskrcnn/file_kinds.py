"""What a path the user named is, when it is not a regular file one can open: one wording for image files,
predict's inputs, checkpoints and run directories.

:func:`path_problem` never opens the file and never raises: an ``OSError`` of ``stat`` (a symbolic link
loop, a name too long, no permission) is part of its answer.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def path_problem(path: str | os.PathLike) -> str | None:
    """None for a regular file (or a symbolic link to one), else what ``path`` is, as the end of a sentence
    that starts with the path: "does not exist", "is a directory", "is a symbolic link loop", "is a broken
    symbolic link (its target 'x' does not exist)", "has a name too long for the file system (...)", "is not
    a regular file (a FIFO)", "cannot be accessed: Permission denied"."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows symbolic links
    except OSError as exc:
        return _stat_error(path, exc)
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"is not a regular file ({kind})"


def _stat_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symbolic link loop"
    if exc.errno == errno.ENAMETOOLONG:
        longest = max((len(part) for part in path.parts), default=0)
        return (
            f"has a name too long for the file system ({len(str(path))} characters, the longest part "
            f"{longest}; most file systems allow 255 per part)"
        )
    if exc.errno == errno.ENOENT:
        try:
            if path.is_symlink():
                return f"is a broken symbolic link (its target {os.readlink(path)!r} does not exist)"
        except OSError:
            pass
        return "does not exist"
    if exc.errno == errno.ENOTDIR:
        return "does not exist (a part of its path is a file, not a directory)"
    return f"cannot be accessed: {exc.strerror or exc}"


def is_missing(path: str | os.PathLike) -> bool:
    """Whether ``path`` does not exist (``Path.exists`` raises instead for a name too long)."""
    problem = path_problem(path)
    return problem is not None and problem.startswith("does not exist")
