"""What one job does inside a worker process: run the worker function, write its folder atomically,
and return a small record to the driver. Plain functions (no Ray, no MLflow): the Ray tasks in
orchestrator.remote wrap them, and the benchmark calls them in a plain loop.

A job's folder is `SWEEP/jobs/<job_id>/`: train jobs hold model.pt, metrics.json, network.png;
discover jobs circuit.parquet, summary.json, circuit.png; both end with job.json (the record).
Everything is written into `SWEEP/jobs/.tmp-<id>-<pid>-<rand>/` and renamed into place in one
step, so a job folder that exists is finished, and a crash leaves only a .tmp- folder (removed by
the next run).

Test-only fault injection (spec table [testing], documented in examples/quickstart.toml): a job
matched by `transient_once` raises TransientError on its first attempt, one matched by
`crash_once` calls os._exit(1) on its first attempt; a marker file `SWEEP/.faults/<id>.<fault>`
records that the first attempt happened.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import time
from dataclasses import asdict
from pathlib import Path

from orchestrator.spec import Job, matches, package_version


class TransientError(RuntimeError):
    """A failure worth retrying (Ray retries tasks that raise it, up to resources.max_retries)."""


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Reporter:
    """Progress events for the driver, batched: `send(events, wait)` is called at most every
    `interval` seconds (and on flush); orchestrator.remote's sender forwards them to the progress
    actor (waiting for delivery of "start" and "done": a job's start is delivered before its work
    begins, so even an attempt that dies at once is counted, and all of its events are delivered
    before its result is). Events are tuples
    (event, job_id, kind, label, value, pid, rss). `send=None`: no reporting (plain loop)."""

    def __init__(self, send, job: Job, interval: float = 0.5):
        self.actor, self.job, self.interval = send, job, interval
        self.pid = os.getpid()
        self.buf: list[tuple] = []
        self.last = time.monotonic()

    def emit(self, event: str, value: float = 0, flush: bool = False) -> None:
        if self.actor is None:
            return
        self.buf.append((event, self.job.id, self.job.kind, self.job.label, value, self.pid, rss_bytes()))
        if flush or time.monotonic() - self.last >= self.interval:
            self.flush(wait=event in ("start", "done"))

    def flush(self, wait: bool = False) -> None:
        if self.actor is not None and self.buf:
            self.actor(self.buf, wait)
            self.buf = []
        self.last = time.monotonic()

    def train_progress(self, steps: int, examples: int) -> None:
        self.emit("steps", steps)
        self.emit("examples", examples)

    def edges(self, n: int) -> None:
        self.emit("edges", n)


def inject_faults(job: Job, sweep_dir: Path, faults: dict | None) -> None:
    """TEST ONLY: see the module doc."""
    if not faults:
        return
    for fault in ("crash_once", "transient_once"):
        if not matches(faults.get(fault, []), job):
            continue
        marker = sweep_dir / ".faults" / f"{job.id}.{fault}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue  # not the first attempt
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        if fault == "crash_once":
            os._exit(1)
        raise TransientError(f"injected transient failure of {job.label} (testing.transient_once)")


def job_dir(sweep_dir: Path, job_id: str) -> Path:
    return sweep_dir / "jobs" / job_id


def _tmp_dir(sweep_dir: Path, job_id: str) -> Path:
    tmp = sweep_dir / "jobs" / f".tmp-{job_id}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    return tmp


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        try:
            return _clean(x.item())
        except (ValueError, RuntimeError):
            return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _commit(tmp: Path, sweep_dir: Path, job: Job, record: dict) -> dict:
    record = _clean(record)
    (tmp / "job.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    final = job_dir(sweep_dir, job.id)
    try:
        os.rename(tmp, final)
    except OSError:  # a finished copy is already there (a duplicate attempt): keep the first
        shutil.rmtree(tmp, ignore_errors=True)
        if (final / "job.json").exists():
            return json.loads((final / "job.json").read_text())
        raise
    return record


def _record(job: Job, figures: dict, started: float, peak: int, node_id: str | None = None, **extra) -> dict:
    """A job's record (job.json). `node_id`: the Ray node it ran on (orchestrator.remote passes it;
    None in a plain loop), beside the host name and pid."""
    return {
        "job_id": job.id, "kind": job.kind, "label": job.label, "status": "finished",
        "settings": job.settings, "model_id": job.model_id, "version": package_version(),
        "figures": figures, "duration_seconds": time.time() - started, "peak_memory_bytes": peak,
        "worker_pid": os.getpid(), "hostname": socket.gethostname(), "node_id": node_id, "finished_at": time.time(), **extra,
    }


def _begin(job: Job | dict, sweep_dir: str | Path, actor, faults) -> tuple[Job, Path, "Reporter", float]:
    """How every job starts: its Job, the sweep folder, a progress reporter that has sent
    "start", the start time, and (test only) the injected faults."""
    job = Job(**job) if isinstance(job, dict) else job
    sweep_dir = Path(sweep_dir)
    rep = Reporter(actor, job)
    rep.emit("start", flush=True)
    started = time.time()
    inject_faults(job, sweep_dir, faults)
    return job, sweep_dir, rep, started


def execute_train(job: Job | dict, sweep_dir: str | Path, actor=None, faults=None, device: str = "cpu",
                  node_id: str | None = None):
    """Train one model; returns (record, checkpoint)."""
    from workers.outputs import write_training
    from workers.profile import PeakMemory
    from workers.train import TrainConfig, train

    job, sweep_dir, rep, started = _begin(job, sweep_dir, actor, faults)
    s = job.settings
    config = TrainConfig(task=s["task"], regime=s["regime"], steps=s["steps"], seed=s["seed"], lam=s["lam"],
                         lr=s["lr"], swap_every=s["swap_every"], top_k=s["top_k"], width=s["width"],
                         final_factor=s["final_factor"], log_every=s["log_every"], device=device)
    with PeakMemory(device) as mem:
        result = train(config, progress=rep.train_progress)
    tmp = _tmp_dir(sweep_dir, job.id)
    write_training(result, tmp)
    n_edges = sum(int(w.numel()) for w in result.checkpoint["weights"])
    figures = {**result.metrics, "n_edges": n_edges}
    record = _commit(tmp, sweep_dir, job, _record(job, figures, started, mem.peak_bytes, node_id, curve=result.curve,
                                                  files=["model.pt", "metrics.json", "network.png"]))
    rep.emit("done", flush=True)
    return record, result.checkpoint


def _discover_kwargs(job: Job) -> dict:
    s = job.settings
    return {"ablation": s["ablation"], "output": s["output"], "seed": s["seed"]}


def _discover_device(job: Job) -> str:
    """Where a discovery runs: the job's "device" setting when it has one, else "auto" (the GPU
    when the worker's torch sees one)."""
    return job.settings.get("device") or "auto"


def _write_discovery(job: Job, sweep_dir: Path, d, ckpt, started: float, peak: int, node_id: str | None = None,
                     **extra) -> dict:
    from workers.discover import summary_figures, write_discovery

    tmp = _tmp_dir(sweep_dir, job.id)
    write_discovery(d, tmp, ckpt)
    figures = summary_figures(d.summary)  # flat: the evaluation examples' figures as eval_*
    return _commit(tmp, sweep_dir, job, _record(job, figures, started, peak, node_id,
                                               files=["circuit.parquet", "summary.json", "circuit.png"], **extra))


def execute_discover(job: Job | dict, sweep_dir: str | Path, ckpt: dict, actor=None, faults=None,
                     node_id: str | None = None) -> dict:
    """Find one circuit in one pass; returns the record."""
    from workers.discover import discover, resolve_device
    from workers.profile import PeakMemory

    job, sweep_dir, rep, started = _begin(job, sweep_dir, actor, faults)
    device = resolve_device(_discover_device(job))
    with PeakMemory(device) as mem:
        d = discover(ckpt, job.settings["method"], job.settings["threshold"], progress=rep.edges,
                     device=device, **_discover_kwargs(job))
    rep.flush()
    record = _write_discovery(job, sweep_dir, d, ckpt, started, mem.peak_bytes, node_id, chunks=1)
    rep.emit("done", flush=True)
    return record


def execute_exact_chunk(job: Job | dict, ckpt: dict, start: int, stop: int, actor=None):
    """`exact` scores of edges [start, stop); returns (scores, t_start, t_end, peak_bytes)."""
    from workers.discover import exact_scores, resolve_device
    from workers.profile import PeakMemory

    job = Job(**job) if isinstance(job, dict) else job
    rep = Reporter(actor, job)
    rep.emit("chunk", stop - start, flush=True)
    t0 = time.time()
    device = resolve_device(_discover_device(job))
    with PeakMemory(device) as mem:
        scores = exact_scores(ckpt, start=start, stop=stop, progress=rep.edges, device=device,
                              **_discover_kwargs(job))
    rep.flush(wait=True)
    return scores, t0, time.time(), mem.peak_bytes


def execute_exact_merge(job: Job | dict, sweep_dir: str | Path, ckpt: dict, chunks: list, actor=None,
                        faults=None, node_id: str | None = None) -> dict:
    """Assemble the chunks' scores into the circuit, as one-pass `exact` would write it."""
    import numpy as np

    from workers.discover import discovery_from_scores

    job, sweep_dir, rep, _ = _begin(job, sweep_dir, actor, faults)
    started = min(c[1] for c in chunks)
    scores = np.concatenate([c[0] for c in chunks])
    s = job.settings
    d = discovery_from_scores(ckpt, scores, method="exact", threshold=s["threshold"],
                              seconds=max(c[2] for c in chunks) - started, **_discover_kwargs(job))
    d.summary["discovery_seconds_incl_merge"] = time.time() - started
    record = _write_discovery(job, sweep_dir, d, ckpt, started, max(c[3] for c in chunks), node_id,
                              chunks=len(chunks))
    rep.emit("done", flush=True)
    return record


def job_to_dict(job: Job) -> dict:
    return asdict(job)
