"""Sweeps from Python (a notebook, a script): what `circuitry validate` and `circuitry run` do,
without the command line.

    spec = circuitry.validate("examples/quickstart.toml")      # SpecError names a bad field
    out = circuitry.run_sweep("examples/quickstart.toml")      # SweepOutcome: counts, folder, store
"""
from __future__ import annotations

from pathlib import Path

from circuitry.orchestrator.spec import Spec, load_spec


def validate(spec_path: str | Path, root: str | Path | None = None) -> Spec:
    """The checked spec and its job graph (`spec.jobs`); raises SpecError, one line naming the
    field and the fix, on a bad spec. `root`: the folder the sweep folder goes under, instead of
    the spec's sweep.root."""
    return load_spec(spec_path, root)


def run_sweep(spec_path: str | Path, root: str | Path | None = None, *, address: str | None = None,
              num_cpus: int | None = None, tracking_uri: str | None = None, metrics_port: int | None = None,
              record_mlflow: bool = True, progress: bool = False, echo=None):
    """Run the spec's sweep on Ray (`address`, RAY_ADDRESS, else an embedded local Ray, stopped
    again afterwards); only jobs without a finished result run. Returns the
    orchestrator.scheduler.SweepOutcome (counts, failures, the sweep folder and tracking URI).
    Ctrl-C stops it resumably, as `circuitry run` does."""
    from circuitry.orchestrator.ray_session import ensure_ray
    from circuitry.orchestrator.scheduler import Scheduler

    from circuitry.orchestrator.store import sweep_lock

    spec = validate(spec_path, root)
    sched = Scheduler(spec, tracking_uri=tracking_uri, metrics_port=metrics_port, progress=progress,
                      record_mlflow=record_mlflow, echo=echo or (lambda m: None))
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    with sweep_lock(spec.sweep_dir):  # as `circuitry run`: the lock and the folder before Ray starts
        sched.prepare_folder()
        started = ensure_ray(address, num_cpus)
        try:
            return sched.run(locked=True)
        finally:
            if started:
                import ray

                ray.shutdown()
