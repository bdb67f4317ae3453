"""What a training run leaves in its folder: model.pt, metrics.json (with the loss curve) and
network.png. Written atomically so a crash never leaves a finished-looking half result."""
from __future__ import annotations

import json
import os
from pathlib import Path

from workers.draw import draw_network
from workers.model import save_checkpoint


def write_json(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_training(result, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(result.checkpoint, out_dir / "model.pt")
    draw_network(result.checkpoint, out_dir / "network.png")
    # metrics.json last: its presence marks the run finished
    write_json({**result.metrics, "config": result.checkpoint["config"], "curve": result.curve},
               out_dir / "metrics.json")
