"""One training run per run directory: ``<run dir>/run.lock`` holds the running process's pid.

:class:`RunDirLock` is a Hydra callback (``hydra.callbacks.run_dir_lock`` in ``conf/train.yaml``):
it runs before Hydra writes anything into the run directory, so a refused run changes nothing there.

* Another live run holds the lock: one line naming the directory and its pid, exit status 1.
* A lock whose process is gone (killed, crashed machine) is stale and taken over; so is the lock
  of an earlier incarnation of the same SLURM job (a requeued job runs on another node).
* The directory holds an earlier run (``.hydra/config.yaml``): its ``.hydra`` folder is kept as
  ``.hydra.<time it was written>`` before Hydra writes this run's; without ``ckpt_path`` a warning
  says that this run starts over (and overwrites that run's checkpoints).

Only the first process of a job takes the lock (DDP ranks started by Lightning, torchrun or srun
share their rank 0's directory).
"""

from __future__ import annotations

import atexit
import datetime
import errno
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

LOCK_NAME = "run.lock"


class RunDirBusy(RuntimeError):
    """Another live run uses the run directory; the message names it and that run's pid."""


def _first_process() -> bool:
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key, "0") not in ("", "0"):
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, owned by someone else
    return True


def _read(lock: Path) -> dict[str, str]:
    try:
        text = lock.read_text()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _holder_is_live(holder: dict[str, str]) -> bool:
    """Whether the process that wrote ``holder`` may still run (unknown hosts count as live)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("slurm_job_id") == job:
        return False  # an earlier incarnation of this (requeued) job
    if not holder.get("pid", "").isdigit():
        return False  # unreadable or half-written: nobody can be waiting on it
    if holder.get("host") not in (None, socket.gethostname()):
        return True
    return int(holder["pid"]) != os.getpid() and _alive(int(holder["pid"]))


def _busy_message(run_dir: Path, holder: dict[str, str]) -> str:
    host = f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else ""
    return (
        f"run directory {run_dir} is in use by another run (pid {holder.get('pid', '?')}{host}); "
        f"choose another hydra.run.dir, or stop that run (delete {run_dir / LOCK_NAME} if it is gone)"
    )


def acquire(run_dir: str | Path) -> Path:
    """Take ``<run_dir>/run.lock`` for this process (removed again at exit).

    Raises:
        RunDirBusy: a live process holds it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    content = f"pid={os.getpid()}\nhost={socket.gethostname()}\nslurm_job_id={os.environ.get('SLURM_JOB_ID', '')}\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(lock)
            if _holder_is_live(holder):
                raise RunDirBusy(_busy_message(run_dir, holder)) from None
            lock.unlink(missing_ok=True)  # stale
            continue
        with os.fdopen(fd, "w") as f:
            f.write(content)
        atexit.register(release, lock)
        return lock
    raise RunDirBusy(_busy_message(run_dir, _read(lock)))


def release(lock: Path) -> None:
    """Remove ``lock`` if this process holds it."""
    if _read(lock).get("pid") == str(os.getpid()):
        lock.unlink(missing_ok=True)


def keep_earlier_config(run_dir: str | Path, output_subdir: str | None = ".hydra") -> Path | None:
    """Rename an earlier run's ``<run_dir>/<output_subdir>`` to ``<output_subdir>.<its time>``; the new name or None."""
    if not output_subdir:
        return None
    earlier = Path(run_dir) / output_subdir
    if not (earlier / "config.yaml").is_file():
        return None
    stamp = datetime.datetime.fromtimestamp((earlier / "config.yaml").stat().st_mtime).strftime("%Y-%m-%d_%H-%M-%S")
    kept = earlier.with_name(f"{earlier.name}.{stamp}")
    number = 1
    while kept.exists():
        kept, number = earlier.with_name(f"{earlier.name}.{stamp}-{number}"), number + 1
    earlier.rename(kept)
    return kept


class RunDirLock(Callback):
    """Hydra callback: :func:`acquire` the run directory and keep an earlier run's config, before the job."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _first_process():
            return
        run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        try:
            acquire(run_dir)
        except RunDirBusy as exc:
            print(f"RunDirBusy: {exc}", file=sys.stderr)
            sys.exit(1)
        except OSError:  # a directory that cannot be made: the run-directory check says why, in one line
            return
        kept = keep_earlier_config(run_dir, OmegaConf.select(config, "hydra.output_subdir"))
        if kept is not None and not config.get("ckpt_path"):
            print(
                f"warning: run directory {run_dir} holds an earlier run; this run starts over and overwrites its "
                f"checkpoints (ckpt_path=last would resume it). Its config is kept in {kept}",
                file=sys.stderr,
            )
