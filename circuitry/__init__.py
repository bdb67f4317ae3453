"""circuitry: does the way a network is trained make its circuits easier to find?

The public Python API. The repository's top-level folders are installed as sub-packages:
`circuitry.tasks` (the learning problems), `circuitry.workers` (pure compute) and
`circuitry.orchestrator` (sweeps on Ray, recording, the CLI). Names below are imported on first
use, so `import circuitry` stays cheap (no torch until a function is touched).
"""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> (module, attribute)
_API = {
    "TrainConfig": ("circuitry.workers.train", "TrainConfig"),
    "train": ("circuitry.workers.train", "train"),
    "discover": ("circuitry.workers.discover", "discover"),
    "load_checkpoint": ("circuitry.workers.model", "load_checkpoint"),
    "get_task": ("circuitry.tasks", "get_task"),
    "TASKS": ("circuitry.tasks", "TASKS"),
}

__all__ = sorted(_API)


def __getattr__(name: str):
    try:
        module, attribute = _API[name]
    except KeyError:
        raise AttributeError(f"module 'circuitry' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
