"""What one job does inside a worker process: run the worker function and return its result, the
record and the files as bytes (an orchestrator.store.JobResult), for the driver to write. Nothing
here touches the sweep folder: workers need no volume, only the driver writes SWEEP/jobs/
(orchestrator.store). Plain functions (no Ray, no MLflow): the Ray tasks in orchestrator.remote
wrap them, and the benchmark calls them in a plain loop.

Test-only fault injection (spec table [testing], documented in examples/quickstart.toml): a job
matched by `transient_once` raises TransientError on its first attempt, one matched by
`crash_once` calls os._exit(1) on its first attempt. Whether an attempt is the first is asked of
the driver's side (`Faults.first_time`, the progress actor in a Ray run), which keeps the marker
files `SWEEP/.faults/<id>.<fault>` so a later run of the sweep does not fire them again. A job
matched by `hold` waits at its start until the file SWEEP/.release exists (at most HOLD_SECONDS),
so a test can keep a sweep running, or stop it mid-way, without long training; the worker reads
the driver's folder for it, so it holds in a local run only. A train job matched by
`crash_after_checkpoint` calls os._exit(1) on its first attempt right after the driver's side
holds its first checkpoint, so its retry (or the sweep's next run) resumes from it.

Checkpoints within a train job (orchestrator.checkpoints): `Checkpointing` hands the worker's
states to the driver's side and asks it for the newest one; a state that does not fit the job is
ignored (the record's `resume_ignored` says why) and the job starts from step 0.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from circuitry.orchestrator.jobs import Job, matches, package_version
from circuitry.orchestrator.store import JobResult, check_size
from circuitry.workers.names import TRANSFORMER_SHAPE


RELEASE_FILE = ".release"  # in the sweep folder: held jobs go on once it exists
HOLD_SECONDS = 600.0


class TransientError(RuntimeError):
    """A failure worth retrying (Ray retries tasks that raise it, up to resources.max_retries)."""


class Event(NamedTuple):
    """One progress event from a worker to the driver (through the progress actor,
    orchestrator.remote); the scheduler turns each into SweepMetrics calls."""

    name: str  # start, chunk, steps, examples, edges, done; fault (the progress actor's own)
    job_id: str
    kind: str | None  # the job's kind: train or discover
    label: str | None
    value: float | str = 0  # steps, examples or edges done; a fault's name
    pid: int = 0  # the worker process
    rss: int = 0  # its resident memory, on a batch's last event (0 on the others)


class Reporter:
    """Progress events for the driver, batched: `send(events, wait)` is called at most every
    `interval` seconds (and on flush); orchestrator.remote's sender forwards them to the progress
    actor (waiting for delivery of "start" and "done": a job's start is delivered before its work
    begins, so even an attempt that dies at once is counted, and all of its events are delivered
    before its result is). The worker's resident memory is read once a batch, on its last event
    (a read of /proc is not free, and a chunk of `exact` reports once a receiver). `send=None`:
    no reporting (plain loop)."""

    def __init__(self, send, job: Job, interval: float = 0.5):
        self.actor, self.job, self.interval = send, job, interval
        self.pid = os.getpid()
        self.buf: list[Event] = []
        self.last = time.monotonic()

    def emit(self, event: str, value: float = 0, flush: bool = False) -> None:
        if self.actor is None:
            return
        self.buf.append(Event(event, self.job.id, self.job.kind, self.job.label, value, self.pid))
        if flush or time.monotonic() - self.last >= self.interval:
            self.flush(wait=event in ("start", "done"))

    def flush(self, wait: bool = False) -> None:
        if self.actor is not None and self.buf:
            from circuitry.workers.profile import rss_bytes  # imported once the first job runs (torch), not with the driver

            self.buf[-1] = self.buf[-1]._replace(rss=rss_bytes())
            self.actor(self.buf, wait)
            self.buf = []
        self.last = time.monotonic()

    def take(self, event: str) -> float:
        """Remove the unsent `event`s and return the sum of their values, for the caller to
        deliver another way."""
        total = sum(e.value for e in self.buf if e.name == event)
        self.buf = [e for e in self.buf if e.name != event]
        return total

    def train_progress(self, steps: int, examples: int, loss: float | None = None) -> None:
        self.emit("steps", steps)
        self.emit("examples", examples)

    def edges(self, n: int) -> None:
        self.emit("edges", n)


@dataclass
class Checkpointing:
    """A train job's line to the driver's checkpoints (orchestrator.checkpoints): every `every`
    steps `keep(step, state)` hands one over (state as bytes, workers.train_state; it returns once
    the driver's side holds it), and `newest()` is the newest state the driver's side holds for
    the job (bytes) or None."""

    every: int
    keep: Callable[[int, bytes], None]
    newest: Callable[[], bytes | None]


@dataclass
class Faults:
    """TEST ONLY: the spec's [testing] selectors, `first_time(job_id, fault)`, True exactly once
    per job and fault in a sweep, and the file that releases held jobs (see the module doc)."""

    selectors: dict
    first_time: Callable[[str, str], bool]
    release: str | None = None


def fired_faults(sweep_dir: Path) -> list[tuple[str, str]]:
    """TEST ONLY: (job id, fault) of the faults that fired in earlier runs of the sweep."""
    d = sweep_dir / ".faults"
    return [tuple(p.name.rsplit(".", 1)) for p in d.iterdir()] if d.is_dir() else []


def keep_fault_marker(sweep_dir: Path, job_id: str, fault: str) -> None:
    """TEST ONLY: the driver's note that a fault fired (module doc)."""
    d = sweep_dir / ".faults"
    d.mkdir(exist_ok=True)
    (d / f"{job_id}.{fault}").touch()


def inject_faults(job: Job, faults: Faults | None) -> None:
    """TEST ONLY: see the module doc."""
    if faults is None:
        return
    if faults.release and matches(faults.selectors.get("hold", []), job):
        deadline = time.monotonic() + HOLD_SECONDS
        while not os.path.exists(faults.release) and time.monotonic() < deadline:
            time.sleep(0.1)
    for fault in ("crash_once", "transient_once"):
        if not matches(faults.selectors.get(fault, []), job) or not faults.first_time(job.id, fault):
            continue
        if fault == "crash_once":
            os._exit(1)
        raise TransientError(f"injected transient failure of {job.label} (testing.transient_once)")


def crash_after_checkpoint(job: Job, faults: Faults | None) -> None:
    """TEST ONLY: see the module doc (called after each checkpoint the driver's side holds)."""
    fault = "crash_after_checkpoint"
    if faults is not None and matches(faults.selectors.get(fault, []), job) and faults.first_time(job.id, fault):
        os._exit(1)


def _resume_state(checkpointing: Checkpointing | None) -> tuple[dict | None, str | None]:
    """(the newest state the driver's side holds for the job, or None; why one was not usable)."""
    from circuitry.workers.train_state import ResumeMismatch, from_bytes

    blob = checkpointing.newest() if checkpointing is not None else None
    if blob is None:
        return None, None
    try:
        return from_bytes(blob), None
    except ResumeMismatch as e:
        return None, str(e)


def _train_resuming(config, job: Job, rep: "Reporter", checkpointing: Checkpointing | None,
                    faults: Faults | None) -> tuple:
    """workers.train.train with the job's checkpoints: from the newest state held (from step 0 if
    none fits); returns (result, extra record fields)."""
    from circuitry.workers.train import train
    from circuitry.workers.train_state import ResumeMismatch, to_bytes

    def on_checkpoint(state: dict) -> None:
        checkpointing.keep(state["step"], to_bytes(state))
        crash_after_checkpoint(job, faults)

    kw = {} if checkpointing is None else {"checkpoint_every": checkpointing.every, "on_checkpoint": on_checkpoint}
    resume, ignored = _resume_state(checkpointing)
    try:
        result = train(config, progress=rep.train_progress, resume=resume, **kw)
    except ResumeMismatch as e:  # raised before any step
        result, ignored = train(config, progress=rep.train_progress, **kw), str(e)
    extra = {"resumed_from_step": result.resumed_from_step}
    if ignored:
        extra["resume_ignored"] = ignored
    return result, extra


def _record(job: Job, figures: dict, started: float, peak: int, node_id: str | None = None, **extra) -> dict:
    """A job's record (job.json; the driver adds its attempts and file list). `node_id`: the Ray
    node it ran on (orchestrator.remote passes it; None in a plain loop), beside the host name and
    pid."""
    return {
        "job_id": job.id, "kind": job.kind, "label": job.label, "status": "finished",
        "settings": job.settings, "model_id": job.model_id, "version": package_version(),
        "figures": figures, "duration_seconds": time.time() - started, "peak_memory_bytes": peak,
        "worker_pid": os.getpid(), "hostname": socket.gethostname(), "node_id": node_id, "finished_at": time.time(), **extra,
    }


def noop_result(job: Job, faults: Faults | None, started: float, node_id: str | None) -> JobResult | None:
    """TEST ONLY: the finished result of a job the spec's [testing] noop selects (no work, one
    small file), else None."""
    if faults is None or not matches(faults.selectors.get("noop", []), job):
        return None
    return JobResult(_record(job, {"noop": 1}, started, 0, node_id), {"noop.json": b"{}"})


def _begin(job: Job | dict, actor, faults: Faults | None) -> tuple[Job, "Reporter", float]:
    """How every job starts: its Job, a progress reporter that has sent "start", the start time,
    and (test only) the injected faults."""
    job = Job(**job) if isinstance(job, dict) else job
    rep = Reporter(actor, job)
    rep.emit("start", flush=True)
    started = time.time()
    inject_faults(job, faults)
    return job, rep, started


def execute_train(job: Job | dict, actor=None, faults: Faults | None = None, device: str = "cpu",
                  node_id: str | None = None, pictures: bool = True,
                  inputs: tuple[dict, ...] = (), checkpointing: Checkpointing | None = None) -> tuple[JobResult, dict]:
    """Train one model; returns (result, checkpoint). `pictures`: draw network.png (the spec's
    sweep.pictures). A prune job derives its model from `inputs`, the checkpoints of the jobs it
    needs (vanilla, bimt: workers.prune). `checkpointing`: keep checkpoints with the driver and
    resume from its newest (a prune job takes none)."""
    from circuitry.workers.outputs import training_files
    from circuitry.workers.profile import PeakMemory
    from circuitry.workers.prune import PruneConfig, prune
    from circuitry.workers.train import TrainConfig

    job, rep, started = _begin(job, actor, faults)
    if (noop := noop_result(job, faults, started, node_id)) is not None:
        return noop, None
    s, extra = job.settings, {}
    with PeakMemory(device) as mem:
        if s["regime"] == "prune":
            config = PruneConfig(s["finetune_steps"], s["match_fraction"], s["log_every"], device)
            result = prune(*inputs, config, progress=rep.train_progress)
        else:
            config = TrainConfig(task=s["task"], regime=s["regime"], steps=s["steps"], seed=s["seed"], lam=s["lam"],
                                 lr=s["lr"], swap_every=s["swap_every"], top_k=s["top_k"], width=s["width"],
                                 final_factor=s["final_factor"], log_every=s["log_every"], device=device,
                                 **{k: s.get(k) for k in TRANSFORMER_SHAPE})
            result, extra = _train_resuming(config, job, rep, checkpointing, faults)
    weights = result.checkpoint["weights"]  # a list (MLP) or a name -> tensor dict (transformer)
    n_edges = sum(int(w.numel()) for w in (weights.values() if isinstance(weights, dict) else weights))
    figures = {**result.metrics, "n_edges": n_edges}
    files = training_files(result, pictures)  # before the record: its duration includes them
    out = check_size(JobResult(_record(job, figures, started, mem.peak_bytes, node_id, curve=result.curve, **extra),
                               files))
    rep.emit("done", flush=True)
    return out, result.checkpoint


def _discovery_result(job: Job, d, ckpt, started: float, peak: int, node_id: str | None = None,
                      pictures: bool = True, **extra) -> JobResult:
    from circuitry.workers.discover import discovery_files, summary_figures

    figures = summary_figures(d.summary)  # flat: the evaluation examples' figures as eval_*
    files = discovery_files(d, ckpt, pictures)  # before the record: its duration includes them
    return check_size(JobResult(_record(job, figures, started, peak, node_id, **extra), files))


def execute_discover(job: Job | dict, ckpt: dict, actor=None, faults: Faults | None = None,
                     node_id: str | None = None, pictures: bool = True) -> JobResult:
    """Find one circuit in one pass."""
    from dataclasses import replace

    from circuitry.workers.device import pick_device
    from circuitry.workers.discover import find_circuit
    from circuitry.workers.profile import PeakMemory

    job, rep, started = _begin(job, actor, faults)
    if (noop := noop_result(job, faults, started, node_id)) is not None:
        return noop
    config = job.discover_config()
    device = pick_device(config.device)
    with PeakMemory(device) as mem:
        d = find_circuit(ckpt, replace(config, device=str(device)), progress=rep.edges)
    rep.flush()
    out = _discovery_result(job, d, ckpt, started, mem.peak_bytes, node_id, pictures, chunks=1)
    rep.emit("done", flush=True)
    return out


# This worker process's prepared problem for the `exact` job whose chunks it ran last:
# {(job id, device): problem}. One entry at most: a process holds one job's examples and activations.
_PREPARED: dict = {}


def prepared_problem(job: Job, ckpt: dict, device):
    """What every chunk of one `exact` job scores against (the examples, their activations and the
    metric: workers.graph.Problem, on `device`), built by the first chunk of the job that a worker
    process runs and reused by its later ones. Each worker prepares for itself, at the same time as
    the others, rather than one prepare task before every chunk: a 2-worker job's chunks then start
    at once instead of after the prepare task, the problem's trip through the object store and the
    dependent tasks' dispatch, all on the job's critical path."""
    from circuitry.workers.discovery_data import discovery_problem

    key = (job.id, str(device))
    if key not in _PREPARED:
        _PREPARED.clear()
        c = job.discover_config()
        _PREPARED[key] = discovery_problem(ckpt, ablation=c.ablation, output=c.output, seed=c.seed,
                                           metric=c.metric).to(device)
    return _PREPARED[key]


class ChunkResult(NamedTuple):
    """One chunk of an `exact` job: its edges' scores (numpy float64), when it started (before it
    prepared or reused its problem, so the earliest start is the job's) and ended (time.time()),
    its peak memory, and the edges it scored but has not reported (the merge reports them)."""

    scores: Any
    started: float
    ended: float
    peak_bytes: int
    unreported_edges: float


def execute_exact_chunk(job: Job | dict, ckpt: dict, start: int, stop: int, actor=None) -> ChunkResult:
    """`exact` scores of edges [start, stop) of the job's model. The chunk does not wait at its end
    for the progress actor to take its last "edges" events: the merge reports them, before its
    "done" (which it waits for), so every edge is counted before the job's result is seen. A wait
    here would be a round trip to the actor at the end of every chunk, while the cores score."""
    from circuitry.workers.acdc import exact_scores
    from circuitry.workers.device import pick_device
    from circuitry.workers.profile import PeakMemory

    job = Job(**job) if isinstance(job, dict) else job
    t0 = time.time()
    rep = Reporter(actor, job)
    rep.emit("chunk", stop - start, flush=True)
    device = pick_device(job.discover_config().device)
    with PeakMemory(device) as mem:
        scores, _ = exact_scores(prepared_problem(job, ckpt, device), start, stop, progress=rep.edges)
    return ChunkResult(scores.numpy(), t0, time.time(), mem.peak_bytes, rep.take("edges"))


def execute_exact_merge(job: Job | dict, ckpt: dict, chunks: list[ChunkResult], actor=None,
                        faults: Faults | None = None, node_id: str | None = None, pictures: bool = True) -> JobResult:
    """Assemble the chunks' scores into the circuit, as one-pass `exact` would."""
    import numpy as np

    from circuitry.workers.discover import discovery_from_scores

    job, rep, _ = _begin(job, actor, faults)
    started = min(c.started for c in chunks)
    scores = np.concatenate([c.scores for c in chunks])
    d = discovery_from_scores(ckpt, scores, job.discover_config(), seconds=max(c.ended for c in chunks) - started)
    d.summary["discovery_seconds_incl_merge"] = time.time() - started
    out = _discovery_result(job, d, ckpt, started, max(c.peak_bytes for c in chunks), node_id, pictures,
                            chunks=len(chunks))
    rep.emit("edges", sum(c.unreported_edges for c in chunks))  # the chunks' last events (execute_exact_chunk)
    rep.emit("done", flush=True)
    return out
