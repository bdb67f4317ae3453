"""MLflow from a sweep folder after the fact: `circuitry sync` (the runs a sweep could not log)
and the report's files (`circuitry report`). Both log to the store named on the command line or
the embedded one, never to one a file in the sweep folder names (orchestrator.recorder)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from circuitry.orchestrator.mlflow_pool import LogPool, default_threads
from circuitry.orchestrator.recorder import MlflowLogger, embedded_uri, flat_row, write_parquet
from circuitry.orchestrator.store import JobStore, opened_dir, read_regular, sweep_lock


def spec_job_ids(sweep_dir: Path) -> set[str]:
    """The ids of the jobs of SWEEP/spec.toml (as this version of circuitry expands it)."""
    from circuitry.orchestrator.spec import parse_spec

    path = Path(sweep_dir) / "spec.toml"
    return {j.id for j in parse_spec(path.read_text(), str(path)).jobs}


def sync(sweep_dir: Path, sweep_name: str, tracking_uri: str, threads: int | None = None) -> tuple[int, int, int]:
    """Backfill MLflow from the finished, signed results of the jobs of SWEEP/spec.toml (nothing
    else in the folder is read), under the sweep lock; returns (runs logged, jobs already there,
    folders of the spec's jobs left aside: unsigned or damaged). The runs are logged as a sweep
    logs them, `threads` at once (orchestrator.mlflow_pool); the first MLflow failure stops the
    logging and is raised once the runs in flight are done (a later sync logs what is left)."""
    with sweep_lock(sweep_dir):
        records, rejected = JobStore(sweep_dir).scan(spec_job_ids(sweep_dir))
        write_parquet([flat_row(r) for r in records.values()], Path(sweep_dir) / "jobs.parquet")
        errors: list[Exception] = []
        pool = LogPool(lambda: MlflowLogger(tracking_uri, sweep_name, sweep_dir),
                       threads or default_threads(tracking_uri), errors.append)
        for rec in records.values():
            pool.put((rec, False))
        pool.close("FINISHED")
        if errors:
            raise errors[0]
    return pool.logged, len(records) - pool.logged, len(rejected)


def other_uri_note(meta: dict, uri: str) -> str | None:
    """A line naming the tracking URI sweep.json holds when it is not `uri` (module doc)."""
    named = meta.get("tracking_uri")
    if isinstance(named, str) and named and named != uri:
        return (f"note: sweep.json names the tracking URI {named[:300]!r}; not followed (a file in the sweep folder "
                "decides no destination): give --tracking-uri to log there")
    return None


def log_report(sweep_dir: Path, paths: list[Path], tracking_uri: str | None = None) -> str | None:
    """Log the report's files as artifacts (under report/) of the sweep's parent MLflow run.
    Returns where they went, or None (with a warning naming the URI) when MLflow fails: the
    report in the sweep folder stands on its own."""
    sweep_dir = Path(sweep_dir)
    info_path = sweep_dir / "sweep.json"
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except (OSError, ValueError):
        info = {}
    info = info if isinstance(info, dict) else {}
    uri = tracking_uri or embedded_uri(sweep_dir)
    note = other_uri_note(info, uri)
    if note:
        print(note, file=sys.stderr)
    try:
        logger = MlflowLogger(uri, info.get("name", sweep_dir.name), sweep_dir)
        with opened_dir(sweep_dir) as sfd:  # the files the report just wrote, read without following a link
            files = {p.name: read_regular(sfd, p.name, sweep_dir) for p in paths}
        logger._upload(logger.parent, files, "report")
        logger.end("FINISHED")
    except Exception as e:  # noqa: BLE001 - any MLflow failure leaves the local report intact
        print(f"warning: could not log the report to MLflow at {uri} ({type(e).__name__}: {e}); "
              f"it is in {sweep_dir}", file=sys.stderr)
        return None
    return f"{uri} (run {logger.parent}, artifacts report/)"
