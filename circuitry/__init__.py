"""circuitry: does the way a network is trained make its circuits easier to find?

The public Python API. The repository's top-level folders are installed as sub-packages:
`circuitry.tasks` (the learning problems), `circuitry.workers` (pure compute) and
`circuitry.orchestrator` (sweeps on Ray, recording, the CLI). Names below are imported on first
use, so `import circuitry` stays cheap (no torch until a function is touched).

    ckpt = circuitry.train(circuitry.TrainConfig("independence", "bimt", 2000)).checkpoint
    d = circuitry.discover(ckpt, "acdc", 0.01)              # or find_circuit(ckpt, DiscoverConfig(...))
    masks = circuitry.load_circuit("SWEEP/jobs/<id>/circuit.parquet")   # per-layer boolean masks
    out = circuitry.run_sweep("examples/quickstart.toml")   # validate(spec) checks one without running
"""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> (module, attribute)
_API = {
    "TrainConfig": ("circuitry.workers.train", "TrainConfig"),
    "train": ("circuitry.workers.train", "train"),
    "DiscoverConfig": ("circuitry.workers.discover_config", "DiscoverConfig"),
    "discover": ("circuitry.workers.discover", "discover"),
    "find_circuit": ("circuitry.workers.discover", "find_circuit"),
    "load_checkpoint": ("circuitry.workers.model", "load_checkpoint"),
    "load_circuit": ("circuitry.workers.circuit_file", "load_circuit"),
    "get_task": ("circuitry.tasks", "get_task"),
    "TASKS": ("circuitry.tasks", "TASKS"),
    "validate": ("circuitry.orchestrator.sweeps", "validate"),
    "run_sweep": ("circuitry.orchestrator.sweeps", "run_sweep"),
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
