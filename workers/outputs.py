"""What a training run leaves in its folder: model.pt, metrics.json (with the loss curve) and
network.png. A result's files are made as bytes (`training_files`), so a Ray task can hand them
to the driver through the object store and only the driver writes the sweep folder; the CLI
writes them itself with `write_files`, each atomically, so a crash never leaves a
finished-looking half result."""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np

from circuitry.workers.draw import draw_network
from circuitry.workers.model import checkpoint_bytes


def json_bytes(obj) -> bytes:
    """Strict JSON (NaN/inf -> null, numpy scalars as numbers)."""
    return json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default).encode()


def write_files(files: dict[str, bytes], out_dir: str | Path) -> Path:
    """Write {name: bytes} into OUT, in order (the last one marks the result finished), each to a
    temporary name and renamed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = out / f"{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / name)
    return out


def png_bytes(draw, *args, **kwargs) -> bytes:
    """What `draw(..., path)` would save, as bytes (matplotlib writes to a file object too)."""
    buf = io.BytesIO()
    draw(*args, buf, **kwargs)
    return buf.getvalue()


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return _finite(x.item())
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def training_files(result, pictures: bool = True) -> dict[str, bytes]:
    """model.pt, network.png (unless not `pictures`: drawing costs ~0.1-0.2 s, far more than a tiny
    model's training), then metrics.json (last: its presence marks the run finished)."""
    files = {"model.pt": checkpoint_bytes(result.checkpoint)}
    if pictures:
        files["network.png"] = png_bytes(draw_network, result.checkpoint)
    files["metrics.json"] = json_bytes({**result.metrics, "config": result.checkpoint["config"], "curve": result.curve})
    return files


def write_training(result, out_dir: str | Path) -> None:
    write_files(training_files(result), out_dir)
