"""What a training run leaves in its folder: model.pt, metrics.json (with the loss curve) and
network.png. Written atomically so a crash never leaves a finished-looking half result."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from workers.draw import draw_network
from workers.model import save_checkpoint


def write_json(obj, path: Path) -> None:
    """Strict JSON (NaN/inf -> null, numpy scalars as numbers), written atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, path)


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


def write_training(result, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(result.checkpoint, out_dir / "model.pt")
    draw_network(result.checkpoint, out_dir / "network.png")
    # metrics.json last: its presence marks the run finished
    write_json({**result.metrics, "config": result.checkpoint["config"], "curve": result.curve},
               out_dir / "metrics.json")
