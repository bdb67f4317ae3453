"""The Ray side: remote tasks wrapping orchestrator.execute, and the progress actor workers report
to. Imports no MLflow and writes no file: a task returns its result through the object store and
the driver records it (orchestrator.store)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import ray

from circuitry.orchestrator import execute
from circuitry.orchestrator.jobs import Job


def _threads(n: float) -> None:
    """One torch thread per CPU the task asked for: tiny nets train several times faster than
    with every process using every core."""
    import torch

    torch.set_num_threads(max(1, int(n)))


def _sender(actor):
    """execute.Reporter's `send`: events to the progress actor (fire and forget unless `wait`)."""
    if actor is None:
        return None

    def send(events, wait=False):
        ref = actor.report.remote(events)
        if wait:
            _get_keeping_cpus(ref)

    return send


def _get_keeping_cpus(ref):
    """`ray.get(ref)` without blocking in Ray on the task's main thread: Ray's own future, which its
    core worker completes from another thread. A task blocked in `ray.get` on its main thread lends
    its CPU back to Ray, which then starts a worker process for the next queued task; the task that
    blocked (for a millisecond) finishes, sits idle and is stopped, and the queued one waits for
    a cold process, which costs a chunked job most of a second a chunk. Ray lends the CPU only for
    waits in its own get."""
    return ref.future().result()


def _faults(actor, faults):
    """execute.Faults asking the progress actor whether an injected fault fires (test only):
    `faults` is (the spec's [testing] selectors, the sweep's release file) or None."""
    if not faults:
        return None
    selectors, release = faults
    return execute.Faults(selectors, lambda job_id, fault: _get_keeping_cpus(actor.first_time.remote(job_id, fault)),
                          release)


def _checkpointing(actor, job: dict, every: int, held: bool):
    """execute.Checkpointing through the progress actor, which holds the newest state of each job
    for the driver (orchestrator.checkpoints); None for a prune job or one that keeps none. A job
    asks for a state only when it can have one: the driver handed one over (`held`), or it runs
    long enough to have taken one in an earlier attempt."""
    if actor is None or job["settings"]["regime"] == "prune" or not (every or held):
        return None
    job_id = job["id"]
    asks = held or job["settings"]["steps"] > every

    def keep(step: int, state: bytes) -> None:
        _get_keeping_cpus(actor.keep_checkpoint.remote(job_id, step, state))

    def newest():
        return _get_keeping_cpus(actor.checkpoint_of.remote(job_id)) if asks else None

    return execute.Checkpointing(every, keep, newest)


@ray.remote(num_returns=2)
def job_task(op: str, cpus: float, actor, *args):
    """Every kind of work is this one task (`op` picks it), so Ray sees one scheduling class and
    hands the next job to the same warm worker process (a lease is reused only within a class;
    with one function per kind, workers are started and killed between kinds, about a second a job).
    Returns (result, checkpoint or None): a JobResult (record and files) for train, discover and
    merge, the scores of its edges for a chunk."""
    _threads(cpus)
    send = _sender(actor)
    node = ray.get_runtime_context().get_node_id()  # recorded in job.json (workers import no Ray)
    if op == "train":  # a prune job also gets the checkpoints it reads (Ray resolves their refs)
        job, faults, device, pictures, (every, held), *inputs = args
        return execute.execute_train(job, send, _faults(actor, faults), device, node, pictures, tuple(inputs),
                                     _checkpointing(actor, job, every, held))
    if op == "discover":
        job, ckpt, faults, pictures = args
        return execute.execute_discover(job, ckpt, send, _faults(actor, faults), node, pictures), None
    if op == "chunk":
        job, ckpt, start, stop = args
        return execute.execute_exact_chunk(job, ckpt, start, stop, send), None
    if op == "merge":
        job, ckpt, faults, pictures, *chunks = args
        return execute.execute_exact_merge(job, ckpt, list(chunks), send, _faults(actor, faults), node,
                                           pictures), None
    raise ValueError(f"unknown op {op!r}")


@dataclass
class Submitter:
    """Named submissions of the one Ray task (`job_task`), with what every submission of a sweep
    shares: the progress actor, the test-only faults, whether to draw pictures, and per kind of
    work the task options (resources, retries), the CPUs (torch threads) and the training device."""

    actor: Any
    faults: tuple[dict, str] | None  # test only: ([testing] selectors, the release file), see execute
    pictures: bool
    train_options: dict
    train_cpus: float
    train_device: str
    discover_options: dict
    discover_cpus: float
    checkpoint_every: int = 0  # train steps between checkpoints kept by the driver; 0: none

    def train(self, job: Job, inputs=(), held: bool = False) -> tuple:
        """(result ref, checkpoint ref) of a train job; a prune job gets the refs of the
        checkpoints it reads (`inputs`). `held`: the progress actor holds a training state of
        the job, which it resumes from (orchestrator.checkpoints)."""
        return self._submit("train", self.train_options, self.train_cpus, asdict(job), self.faults, self.train_device,
                            self.pictures, (self.checkpoint_every, held), *inputs)

    def discover(self, job: Job, ckpt_ref):
        """The result ref of a discover job done in one task."""
        return self._submit("discover", self.discover_options, self.discover_cpus, asdict(job), ckpt_ref, self.faults,
                            self.pictures)[0]

    def chunk(self, job: Job, ckpt_ref, start: int, stop: int):
        """The ref of one chunk of an `exact` job: the scores of edges [start, stop)."""
        return self._submit("chunk", self.discover_options, self.discover_cpus, asdict(job), ckpt_ref, start, stop)[0]

    def merge(self, job: Job, ckpt_ref, chunk_refs: list):
        """The result ref of the task that assembles an `exact` job's chunks (Ray starts it when the
        last chunk is done)."""
        return self._submit("merge", self.discover_options, self.discover_cpus, asdict(job), ckpt_ref, self.faults,
                            self.pictures, *chunk_refs)[0]

    def _submit(self, op: str, options: dict, cpus: float, *args):
        return job_task.options(**options).remote(op, cpus, self.actor, *args)


_ACTORS: dict = {}


def progress_actor():
    """This driver's progress actor, created once per Ray session and reused by later sweeps (an
    actor is a process: starting one per sweep would cost a second or more)."""
    ctx = ray.get_runtime_context()
    key = (ctx.get_job_id(), getattr(ctx, "gcs_address", None), ctx.get_node_id())
    actor = _ACTORS.get(key)
    if actor is not None:
        try:
            ray.get(actor.reset.remote(), timeout=10)  # drop a previous sweep's late events and states
            return actor
        except Exception:  # noqa: BLE001 - gone with an earlier Ray session: make a new one
            pass
    _ACTORS.clear()
    _ACTORS[key] = actor = ProgressActor.remote()
    return actor


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class ProgressActor:
    """Collects workers' progress events; the driver drains them into Prometheus. Also the judge
    of test-only injected faults: `first_time` is True once per (job, fault) since `arm`, and
    reports a "fault" event so the driver keeps a marker (SWEEP/.faults/). And the driver's side
    of training checkpoints (orchestrator.checkpoints): it holds each job's newest state, for the
    driver to write and for a retried attempt to resume from."""

    def __init__(self):
        self.events: list = []
        self.fired: set = set()
        self.checkpoints: dict[str, tuple[int, bytes]] = {}  # job id -> (step, state)

    def reset(self) -> None:
        """A new sweep: nothing of the last one's is kept."""
        self.events, self.checkpoints = [], {}

    def keep_checkpoint(self, job_id: str, step: int, state: bytes, report: bool = True) -> None:
        """Hold a job's state (unless a later one is held); `report`: a "checkpoint" event tells
        the driver to write it (a state the driver itself hands over is on its disk already)."""
        held = self.checkpoints.get(job_id)
        if held is None or step >= held[0]:
            self.checkpoints[job_id] = (step, state)
        if report:
            self.events.append(execute.Event("checkpoint", job_id, "train", None, step))

    def checkpoint_of(self, job_id: str, with_step: bool = False):
        """The job's newest state (bytes; (step, bytes) `with_step`), or None."""
        held = self.checkpoints.get(job_id)
        return held if held is None or with_step else held[1]

    def forget(self, job_id: str) -> None:
        self.checkpoints.pop(job_id, None)

    def report(self, events: list) -> None:
        self.events.extend(events)

    def drain(self) -> list:
        out, self.events = self.events, []
        return out

    def arm(self, fired: list) -> None:
        """A new sweep: these (job id, fault) pairs fired in its earlier runs."""
        self.fired = {tuple(f) for f in fired}

    def first_time(self, job_id: str, fault: str) -> bool:
        if (job_id, fault) in self.fired:
            return False
        self.fired.add((job_id, fault))
        self.events.append(execute.Event("fault", job_id, None, None, fault))
        return True
