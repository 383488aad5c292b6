"""One run per run directory: a live lock refuses a second run, a stale one is taken over, an earlier
run's config is kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers.config import ROOT
from maskrcnn.training.run_dir_lock import (
    LOCK_NAME,
    RunDirBusy,
    acquire,
    keep_earlier_config,
    release,
)


@pytest.fixture
def other_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _write_lock(run_dir, pid):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(f"pid={pid}\nhost={os.uname().nodename}\nslurm_job_id=\n")


def test_live_lock_refuses_and_names_directory_and_pid(tmp_path, other_process):
    _write_lock(tmp_path, other_process.pid)
    expected = rf"run directory {tmp_path} is in use by another run \(pid {other_process.pid}\)"
    with pytest.raises(RunDirBusy, match=expected):
        acquire(tmp_path)


def test_stale_lock_is_taken_over_and_released(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    _write_lock(tmp_path, int(dead.stdout))
    lock = acquire(tmp_path)
    assert f"pid={os.getpid()}" in lock.read_text()
    release(lock)
    assert not lock.exists()


def test_earlier_config_is_kept(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 1\n")
    kept = keep_earlier_config(tmp_path)
    assert kept.name.startswith(".hydra.") and (kept / "config.yaml").read_text() == "seed: 1\n"
    assert not (tmp_path / ".hydra").exists()


def test_second_concurrent_run_stops_with_one_line_and_writes_nothing(tmp_path, other_process):
    _write_lock(tmp_path, other_process.pid)
    proc = subprocess.run(
        [sys.executable, "src/train.py", "logger=none", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        (
            f"RunDirBusy: run directory {tmp_path} is in use by another run (pid {other_process.pid}); "
            f"choose another hydra.run.dir, or stop that run (delete {tmp_path / LOCK_NAME} if it is gone)"
        )
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # Hydra wrote nothing


def test_reusing_a_finished_run_directory_warns_that_it_starts_over(tmp_path, capsys):
    from omegaconf import OmegaConf

    from maskrcnn.training.run_dir_lock import RunDirLock

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 1\n")
    config = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path)}, "output_subdir": ".hydra"}, "ckpt_path": None})
    RunDirLock().on_run_start(config)
    err = capsys.readouterr().err
    assert f"run directory {tmp_path} holds an earlier run; this run starts over" in err
    assert len(list(tmp_path.glob(".hydra.*/config.yaml"))) == 1
    release(tmp_path / LOCK_NAME)
