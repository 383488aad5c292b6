"""The benchmark's output: the machine it ran on, and one markdown table of rows.

A row is ``(section, metric, ours, baseline, notes)``: ``section`` is the task that measured it
(``model``, ``data``, ...), ``ours`` / ``baseline`` are numbers in the unit the metric names, and
``baseline`` is None where nothing is compared (the table then shows "-").
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

Row = tuple[str, str, float, float | None, str]
HEADER = ("section", "metric", "ours", "baseline", "ours / baseline", "baseline; notes")


def load_average() -> str | None:
    """``"0.95 / 0.97 / 1.05"`` (1/5/15 min), or None where the OS does not report it."""
    if not hasattr(os, "getloadavg"):
        return None
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def machine_description(device: str) -> list[str]:
    """Lines describing CPU, memory, load, library versions (and GPU when CUDA is used)."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [f"CPU: {cpu}, {os.cpu_count()} logical cores ({usable} usable), torch threads {torch.get_num_threads()}"]
    try:
        mem_kb = int(
            next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1]
        )
        lines.append(f"RAM: {mem_kb / 2**20:.1f} GiB")
    except (OSError, StopIteration):
        pass
    load = load_average()
    if load is not None:
        lines.append(f"load average at start (1/5/15 min): {load}")
    import torchvision

    lines.append(
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}"
    )
    if device == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    return lines


def fmt(value: float) -> str:
    """3 significant digits or so: 132, 35.84 -> "35.84", 0.380."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def to_markdown(rows: list[Row]) -> str:
    """Rows of (section, metric, ours, baseline, notes) -> markdown table with the ratio column."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for section, metric, ours, base, notes in rows:
        if base is None:
            base_text, ratio = "-", "n/a"
        else:
            base_text, ratio = fmt(base), (f"{ours / base:.2f}" if base > 0 else "n/a")
        lines.append(f"| {section} | {metric} | {fmt(ours)} | {base_text} | {ratio} | {notes} |")
    return "\n".join(lines)
