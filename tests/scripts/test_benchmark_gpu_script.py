"""scripts/benchmark_gpu.sh: STAGES picks the steps (a next GPU session runs only what is missing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "benchmark_gpu.sh"
STAGES = (
    "cuda tests",
    "model eager",
    "shapes demo on the GPU",
    "predict inference=fast",
    "data pipeline per worker",
    "model compile",
)


def _run(tmp_path: Path, stages: str) -> str:
    env = {**os.environ, "STAGES": stages, "PYTHON": sys.executable, "BUDGET_S": "60"}
    run = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=SCRIPT.parents[1],
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_no_stage_chosen_skips_every_step(tmp_path):
    out = _run(tmp_path, "none")
    for name in STAGES:
        assert f"=== {name}: skipped (STAGES)" in out
    assert "=== done" in out and (tmp_path / "out" / "env.txt").exists()


def test_a_chosen_stage_runs_and_reports_its_exit_status(tmp_path):
    out = _run(tmp_path, "tests")  # without CUDA its test cases are skipped
    assert "=== cuda tests: start (limit 90 s)" in out and "=== cuda tests: exit " in out
    assert "=== model eager: skipped (STAGES)" in out
