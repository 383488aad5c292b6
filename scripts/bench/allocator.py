"""Fixed glibc malloc thresholds for the data benchmark (``data_pipeline.time_pipelines``), so
that its rates do not depend on the process's allocation history.

Each training image allocates a few buffers of 2-10 MB (decoded and resized image, masks, the
float tensor). glibc serves requests above its mmap threshold (128 KB at start, raised as mmapped
chunks are freed, at most 32 MB) with fresh pages from the kernel and unmaps them on free, and
returns heap memory above the trim threshold to the kernel; every first write to such a page is a
page fault. Whether the dynamic thresholds have risen depends on what the process allocated
before, so without fixed thresholds the same code ran at very different rates from process to
process; with the mmap threshold fixed at 32 MB and the trim threshold at 64 MB (not 0, which
returns the freed heap to the kernel) every run gets the fast rate (docs/benchmarks.md).

Not applied to training's DataLoader workers: their rate is bounded by handing each float image to
the main process through shared memory, not by the worker's allocations.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold_mb: int = 32, trim_threshold_mb: int = 64) -> bool:
    """Set glibc's mmap and trim thresholds for this process (module docstring).

    Returns True when both were set; False on other platforms or C libraries without
    ``mallopt`` (nothing changed), or where it refused a value (the mmap threshold may then be set).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc returns 1 on success; musl's stub returns 0
    ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold_mb << 20) == 1
    ok = ok and mallopt(M_TRIM_THRESHOLD, trim_threshold_mb << 20) == 1
    if not ok:
        log.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    return ok
