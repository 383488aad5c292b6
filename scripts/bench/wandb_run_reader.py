"""Read an offline W&B run back from disk, without an account or the network.

An offline run directory (``<save_dir>/wandb/offline-run-<time>-<id>/``) holds ``run-<id>.wandb``,
a LevelDB-style log of ``wandb.proto.wandb_internal_pb2.Record`` protobufs, and ``files/``, where
media (images, masks, box and table json) are written. wandb >= 0.19 writes the log from its Go
core and ships no Python reader, so the (small, stable) framing is decoded here: a 7-byte file
header (``":W&B"``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte
header (crc32, length uint16, type 1=full 2=first 3=middle 4=last); a block tail shorter than a
chunk header is zero padding.

Used by the tests (``tests/training/test_wandb.py``) and ``scripts/render_wandb_overlay.py``.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list:
    """Every ``Record`` protobuf of a ``.wandb`` file, in write order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a W&B run log (header {ident!r}, magic {magic:#x}, version {version})")
    records, pending, pos = [], b"", _FILE_HEADER.size
    while pos + _CHUNK_HEADER.size <= len(data):
        if _BLOCK - pos % _BLOCK < _CHUNK_HEADER.size:  # block tail padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        pos += _CHUNK_HEADER.size
        if (kind == 0 and length == 0) or pos + length > len(data):  # the tail of a file being written
            break
        chunk, pos = data[pos : pos + length], pos + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _merge_items(target: dict, items) -> dict:
    """Fold history / config / summary items into ``target``. wandb flattens a nested value
    (a media descriptor, a config section) into one item per leaf with a ``nested_key`` path;
    the path is folded back so ``row["val/samples/7"]["masks"]["predictions"]["path"]`` works."""
    for item in items:
        path = list(item.nested_key) or [item.key]
        node = target
        for part in path[:-1]:
            node = node.setdefault(part, {})
        _deep_set(node, path[-1], json.loads(item.value_json))
    return target


def _deep_set(node: dict, key: str, value: object) -> None:
    # The run's own `_wandb` config section arrives both whole and leaf by leaf; merge, never drop.
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        for k, v in value.items():
            _deep_set(node[key], k, v)
    else:
        node[key] = value


@dataclass
class OfflineRun:
    """What an offline run logged.

    history: one dict per ``wandb.log`` call (media values are their json descriptors, whose
        ``path`` is relative to ``files_dir``).
    config: the run config as ``{key: value}`` (last value per key).
    artifacts: ``{"name", "type", "aliases", "metadata", "files"}`` per logged artifact.
    finished: the run's exit record is in the file (everything before it is complete).
    """

    run_dir: Path
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    artifacts: list[dict] = field(default_factory=list)
    finished: bool = False

    @property
    def files_dir(self) -> Path:
        return self.run_dir / "files"

    def values(self, key: str) -> list:
        """Every logged value of ``key``, in order."""
        return [row[key] for row in self.history if key in row]

    def keys(self) -> set[str]:
        return {key for row in self.history for key in row}

    def table(self, descriptor: dict) -> dict:
        """The ``{"columns": [...], "data": [[...], ...]}`` json of a logged ``wandb.Table``."""
        return json.loads((self.files_dir / descriptor["path"]).read_text())


def read_offline_run(run_dir: str | Path, wait_s: float = 0.0) -> OfflineRun:
    """Parse ``run-*.wandb`` of an offline run directory.

    wait_s: wait up to this long for the run's exit record: ``wandb.finish()`` can return before
        wandb's writer process has written the last records.
    """
    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file (is this an offline W&B run directory?)")
    deadline = time.monotonic() + wait_s
    run = _parse(run_dir, logs[0])
    while not run.finished and time.monotonic() < deadline:
        time.sleep(0.2)
        run = _parse(run_dir, logs[0])
    return run


def _parse(run_dir: Path, log: Path) -> OfflineRun:
    run = OfflineRun(run_dir=run_dir)
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.history.append(_merge_items({}, record.history.item))
        elif kind == "config":
            _merge_items(run.config, record.config.update)
        elif kind == "run":
            _merge_items(run.config, record.run.config.update)
        elif kind == "summary":
            _merge_items(run.summary, record.summary.update)
        elif kind == "artifact":
            artifact = record.artifact
            run.artifacts.append(
                {
                    "name": artifact.name,
                    "type": artifact.type,
                    "aliases": list(artifact.aliases),
                    "metadata": json.loads(artifact.metadata) if artifact.metadata else {},
                    "files": [entry.path for entry in artifact.manifest.contents],
                }
            )
        elif kind == "exit":
            run.finished = True
    return run


def latest_offline_run(save_dir: str | Path) -> Path:
    """The newest ``offline-run-*`` directory under ``<save_dir>/wandb``."""
    runs = sorted(Path(save_dir, "wandb").glob("offline-run-*"))
    if not runs:
        raise FileNotFoundError(f"{save_dir}/wandb: no offline-run-* directory")
    return runs[-1]
