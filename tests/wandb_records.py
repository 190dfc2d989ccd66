"""Read an offline W&B run's `run-*.wandb` file: its history rows, config updates and artifacts (test helper).

The file is a LevelDB-style log (what `wandb sync` reads): a 7-byte header (":W&B", magic, version), then 32 KiB
blocks of chunks (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last), each record a
`wandb_internal_pb2.Record`. wandb >= 0.19 no longer ships a Python reader.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = 7


def records(path: Path) -> list[Any]:
    """Every record of a `.wandb` file, in order."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, parts = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        if pos + HEADER + length > len(data):
            raise ValueError(f"{path}: truncated at byte {pos}; is the run still being written?")
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            out.append(record)
    return out


@dataclass
class OfflineRun:
    """What an offline run recorded: history rows (nested keys joined by '.'), the final config, artifacts."""

    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Any] = field(default_factory=list)  # ArtifactRecord protos


def finished_records(path: Path, timeout_s: float = 30.0) -> list[Any]:
    """The records of a run file once it is complete (it ends with its exit record): `wandb.finish()` can return
    while W&B's service is still writing an offline run."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = records(path)
            if any(r.WhichOneof("record_type") == "exit" for r in found):
                return found
        except (ValueError, DecodeError):
            pass
        if time.monotonic() > deadline:
            return records(path)
        time.sleep(0.2)


def read_run(run_dir: Path) -> OfflineRun:
    """Parse the one `run-*.wandb` file of an offline run folder."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    run = OfflineRun()
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or ".".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            run.history.append(row)
        elif kind == "config":
            for item in record.config.update:
                run.config[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
    return run
