"""The data benchmark fixes glibc's malloc thresholds (bench.allocator)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from bench import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

_MMAPPED = textwrap.dedent("""
    import ctypes, sys
    import torch
    from bench.allocator import keep_freed_memory

    class MallInfo2(ctypes.Structure):  # glibc >= 2.33
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tuned":
        assert keep_freed_memory()
    before = libc.mallinfo2().hblkhd  # bytes held in separately mmapped chunks (imports' included)
    grown = []
    for _ in range(3):  # what a data worker does per image: a fresh 10 MB buffer, written, freed
        buffer = torch.empty(10 << 18).fill_(1.0)
        grown.append(libc.mallinfo2().hblkhd - before)
        del buffer
    print(max(grown))
""")


def _mmapped_bytes(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", _MMAPPED, mode], capture_output=True, text=True)
    if run.returncode != 0 and "mallinfo2" in run.stderr:
        pytest.skip("glibc without mallinfo2")
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_tuned_process_serves_image_sized_buffers_from_the_heap():
    # glibc's default gives a first 10 MB buffer fresh mmapped pages (unmapped again on free, so
    # the next image faults them in anew); the fixed thresholds keep such buffers in the heap
    assert _mmapped_bytes("plain") >= 10 << 20
    assert _mmapped_bytes("tuned") == 0


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_keep_freed_memory_sets_the_thresholds_on_glibc():
    assert allocator.keep_freed_memory() is True


def test_keep_freed_memory_does_nothing_elsewhere(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
