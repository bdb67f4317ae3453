"""What a training run leaves in its folder: model.pt, metrics.json (with the loss curve) and
network.png. A result's files are made as bytes (`training_files`), so a Ray task can hand them
to the driver through the object store and only the driver writes the sweep folder; the CLI
writes them itself with `write_files` (workers.files), each atomically, so a crash never leaves a
finished-looking half result."""
from __future__ import annotations

import io
from pathlib import Path

from circuitry.workers.draw import draw_network
from circuitry.workers.files import json_bytes, write_files
from circuitry.workers.model import checkpoint_bytes


def png_bytes(draw, *args, **kwargs) -> bytes:
    """What `draw(..., path)` would save, as bytes (matplotlib writes to a file object too)."""
    buf = io.BytesIO()
    draw(*args, buf, **kwargs)
    return buf.getvalue()


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
