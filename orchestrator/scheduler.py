"""Running a sweep's job graph on Ray.

Train jobs and discover jobs are Ray tasks with resource requests (GPUs only where the cluster has
them) and retries (`resources.max_retries`: on worker death and on TransientError). A discover job
(and a prune train job, which reads a vanilla and a bimt model) is submitted the moment its
model (both models) exists (its train job finished now or in an earlier run); its
checkpoint travels through the object store. `exact` on a model with more than
`resources.edge_chunk` edges fans out into ceil(edges / edge_chunk) chunk tasks of equal
estimated work (workers.chunks), each of which prepares the problem it scores against once per
worker process (orchestrator.execute.prepared_problem), and a merge task assembles their scores
(Ray starts the merge when the last chunk is done). The driver loops over `ray.wait`, drains the
progress actor into Prometheus, and for every finished job writes its folder (the only writer of
the sweep folder: tasks return their record and files through the object store, so workers need
no shared filesystem; orchestrator.store), then records it (jobs.parquet + MLflow) and draws
progress.

Submission: jobs whose inputs are ready wait in a queue and are submitted while fewer than
`window` jobs are pending in Ray (SUBMIT_WINDOW, or 4 per cluster CPU), so the driver's memory
grows with the spec's jobs (their settings and states, ~1-2 KB each: benchmarks/driver_memory.py),
not with Ray's per-task state for every job at once.

Resume: a job whose folder SWEEP/jobs/<id>/ exists is finished and never runs again; re-running a
spec after a crash, a Ctrl-C or with more grid points runs only the rest. Ctrl-C cancels the
running tasks (a result the driver has not written yet is run again next time, from the train
job's last checkpoint: orchestrator.checkpoints) and leaves the sweep resumable. One driver per sweep folder at a time (a flock on the sweep folder itself, taken
by `circuitry run` before Ray starts: orchestrator.store.sweep_lock). A write the disk refuses
(jobs.parquet, sweep.json) stops the sweep like Ctrl-C, with one line naming the path
(SweepOutcome.write_error); every result already written is kept.

Healing: at the start of a run, a job folder that is not a finished result (unreadable or
inconsistent job.json, a file missing or changed, a model.pt that does not load) is moved aside
with a one-line warning and its job runs again (orchestrator.store.JobStore.heal). A re-trained
model keeps its job id, so its discover jobs' results stay, as long as they were found on the
same model: a kept result whose recorded model content id (`figures.model_id`, the sha256 of the
checkpoint's weights, workers.discover.model_id) differs from the new checkpoint's is moved aside
too and its job runs again. Training is deterministic for a seed on CPU, so normally none does.
"""
from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from circuitry.orchestrator.checkpoints import HeldCheckpoints
from circuitry.orchestrator.execute import RELEASE_FILE, TransientError, fired_faults, keep_fault_marker
from circuitry.orchestrator.metrics import ProgressBar, SweepMetrics
from circuitry.orchestrator.jobs import Job, model_shape
from circuitry.orchestrator.recorder import Recorder, resolve_uri, sync_command
from circuitry.orchestrator.spec import Spec
from circuitry.orchestrator.store import JobResult, JobStore, WriteFailed, sweep_lock, write_atomic

SUBMIT_WINDOW = 1000  # jobs pending in Ray at once, at least (4 per cluster CPU when that is more)


@dataclass
class SweepOutcome:
    sweep_dir: Path
    tracking_uri: str
    total: int
    cached: int = 0
    finished: int = 0
    failed: int = 0
    skipped: int = 0
    retries: int = 0
    interrupted: bool = False
    metrics_port: int | None = None
    mlflow_error: str | None = None
    write_error: str | None = None  # a write of jobs.parquet that failed (a full disk): one line
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)


def _short_error(e: BaseException) -> str:
    """One line: the original exception of a RayTaskError, else the Ray error's first line."""
    cause = getattr(e, "cause", None)
    err = cause if isinstance(cause, BaseException) else e
    first = next((t.strip() for t in str(err).splitlines() if t.strip()), "")
    return f"{type(err).__name__}: {first}"[:500]


class Scheduler:
    """One run of a sweep: submit what is unfinished, then collect results as they come (the
    driver alone writes them, orchestrator.store), until nothing is pending or Ctrl-C."""

    def __init__(self, spec: Spec, *, tracking_uri: str | None = None, metrics_port: int | None = None,
                 metrics_host: str | None = None, metrics_linger: float | None = None, pushgateway: str | None = None,
                 progress: bool = True, record_mlflow: bool = True, echo=None):
        self.spec = spec
        self.sweep_dir = spec.sweep_dir.resolve()
        self.store = JobStore(self.sweep_dir)
        self.uri = resolve_uri(self.sweep_dir, tracking_uri or spec.tracking_uri)
        self.metrics_port = spec.metrics_port if metrics_port is None else metrics_port
        self.metrics_host = metrics_host or spec.metrics_host
        self.metrics_linger = spec.metrics_linger if metrics_linger is None else metrics_linger
        self.pushgateway = spec.pushgateway if pushgateway is None else pushgateway
        self.progress = progress
        self.record_mlflow = record_mlflow
        self.echo = echo or (lambda m: print(m, flush=True))
        self.metrics = SweepMetrics(spec.name)
        self.jobs = {j.id: j for j in spec.jobs}

    # ------------------------------------------------------------ setup
    def prepare_folder(self) -> None:
        """Under the sweep lock: clear a crash's half-written results, then write sweep.json and
        spec.toml (the spec names the jobs that `sync` may record). Needs no Ray: `circuitry run`
        calls it before starting Ray, so a bad folder or a full disk costs no Ray start."""
        self.store.prepare(self.echo)  # removes the half-written results of a crash
        meta = {"name": self.spec.name, "tracking_uri": self.uri, "n_jobs": len(self.spec.jobs)}
        write_atomic(self.sweep_dir / "sweep.json", json.dumps(meta, indent=2).encode())
        write_atomic(self.sweep_dir / "spec.toml", self.spec.source.encode())

    def run(self, locked: bool = False) -> SweepOutcome:
        """The sweep; `locked`: the caller holds the sweep lock and has called prepare_folder."""
        import ray

        from circuitry.orchestrator import remote

        self.ray, self.remote = ray, remote
        t_start = time.monotonic()
        if locked:
            return self._run(t_start)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        with sweep_lock(self.sweep_dir):
            self.prepare_folder()
            return self._run(t_start)

    # ------------------------------------------------------------ the run
    def _run(self, t_start: float) -> SweepOutcome:
        self._start()
        interrupted = False
        try:
            self._submit_unfinished()
            while self._fill():
                self._collect(self._wait())
                self.bar.draw(*self._counts())
                self.recorder.flush_parquet()
        except KeyboardInterrupt:
            interrupted = True
            self.cancel()
        except WriteFailed as e:  # a full disk: stop as Ctrl-C does, keeping every result written
            interrupted, self.out.write_error = True, str(e)
            self.cancel()
        finally:
            self._close(interrupted, t_start)
        return self.out

    def _start(self) -> None:
        """Read the spec's finished results (moving damaged folders aside), start the metrics
        endpoint, the recorder and the progress actor, and decide the tasks' resource requests."""
        spec, res, m = self.spec, self.spec.resources, self.metrics
        self.out = SweepOutcome(self.sweep_dir, self.uri, len(spec.jobs))
        self.existing = self.store.heal(set(self.jobs), warn=self.echo)
        self.done_ids = set(self.existing)
        self.out.cached = len(self.done_ids)

        m.set_total(len(spec.jobs))
        for kind in ("train", "discover"):
            m.move(kind, None, "cached", sum(1 for j in self.done_ids if self.jobs[j].kind == kind))
        self.out.metrics_port = m.serve(self.metrics_port, self.metrics_host)
        if self.out.metrics_port:
            host = self.metrics_host
            shown = f"[{host}]" if ":" in host else host
            where = " (every interface of this node)" if host in ("0.0.0.0", "::") else ""
            self.echo(f"metrics: http://{shown}:{self.out.metrics_port}/metrics{where}")

        self.recorder = Recorder(self.sweep_dir, spec.name, self.uri,
                                 {"n_jobs": len(spec.jobs), "spec": spec.source, "sweep_dir": str(self.sweep_dir)},
                                 mlflow_enabled=self.record_mlflow, warn=self.echo)
        self.recorder.start(self.existing)  # only the spec's jobs are ever recorded

        gpus = self.ray.cluster_resources().get("GPU", 0) > 0
        retry = {"max_retries": res["max_retries"], "retry_exceptions": [TransientError]}
        self.actor = self.remote.progress_actor()
        self.checkpoints = HeldCheckpoints(self.sweep_dir, self.ray, self.actor, self.done_ids, warn=self.echo)
        faults = (spec.testing, str(self.sweep_dir / RELEASE_FILE)) if any(spec.testing.values()) else None
        if faults:
            self.ray.get(self.actor.arm.remote(fired_faults(self.sweep_dir)))
        self.submit = self.remote.Submitter(
            self.actor, faults, spec.pictures,
            train_options={"num_cpus": res["train_cpus"], "num_gpus": res["train_gpus"] if gpus else 0, **retry},
            train_cpus=res["train_cpus"], train_device="cuda" if gpus and res["train_gpus"] > 0 else "cpu",
            discover_options={"num_cpus": res["discover_cpus"], "num_gpus": res["discover_gpus"] if gpus else 0,
                              **retry},
            discover_cpus=res["discover_cpus"], checkpoint_every=spec.checkpoint_every)

        self.state: dict[str, str] = {}
        self.running = 0  # jobs in state "running" (kept by _set_state)
        self.attempts: dict[str, int] = {}
        self.started_at: dict[str, float] = {}  # job id -> when the driver heard of its first attempt
        self.pending: dict = {}  # ObjectRef of a job's result -> job
        self.waiting: deque = deque()  # (job, submit it): ready jobs beyond the window (module doc)
        self.waiting_ids: set[str] = set()
        self.window = max(SUBMIT_WINDOW, 4 * int(self.ray.cluster_resources().get("CPU", 1)))
        self.live: dict[str, list] = {}  # job id -> every ref to cancel on Ctrl-C
        self.ckpt_refs: dict[str, object] = {}
        self.n_edges_of: dict[str, int] = {}
        self.children: dict[str, list[Job]] = {}
        for j in spec.discover_jobs():
            self.children.setdefault(j.model_id, []).append(j)
        self.dependents: dict[str, list[Job]] = {}  # train job id -> the prune jobs that read its model
        for j in spec.train_jobs():
            for need in j.needs:
                self.dependents.setdefault(need, []).append(j)
        self.ready: set[str] = set()  # train jobs whose checkpoint is in ckpt_refs and finished
        self.last_drain = 0.0
        self.bar = ProgressBar(len(spec.jobs), enabled=self.progress, cached=self.out.cached,
                               backlog=self.recorder.backlog)
        self.echo(f"sweep {spec.name}: {len(spec.jobs)} jobs, {self.out.cached} already finished, "
                  f"{len(spec.jobs) - self.out.cached} to run -> {self.sweep_dir}")

    # ------------------------------------------------------------ submitting
    def _submit_unfinished(self) -> None:
        """Unfinished train jobs (a prune job once its models are finished), and discover jobs
        whose model is already finished."""
        for tj in self.spec.train_jobs():
            if tj.id not in self.done_ids:
                if tj.needs:  # comes after the jobs it needs: submitted now if their models are cached
                    self._set_state(tj, "queued")
                    self._submit_if_ready(tj)
                else:
                    self.submit_train(tj)
            elif any(j.id not in self.done_ids for j in self.children.get(tj.id, []) + self.dependents.get(tj.id, [])):
                self.ckpt_refs[tj.id] = self.ray.put(self._cached_model(tj))
                self.n_edges_of[tj.id] = self.existing[tj.id]["figures"].get("n_edges", tj.n_edges)
                self._model_ready(tj.id)
        for dj in self.spec.discover_jobs():  # waiting for a model: count as queued
            if dj.id not in self.done_ids and dj.id not in self.state:
                self._set_state(dj, "queued")

    def _cached_model(self, tj: Job) -> dict:
        from circuitry.workers.model import checkpoint_from_bytes

        return checkpoint_from_bytes(self.store.read_file(tj.id, "model.pt"), self.store.folder(tj.id) / "model.pt")

    def _enqueue(self, job: Job, submit) -> None:
        self.waiting.append((job, submit))
        self.waiting_ids.add(job.id)
        self._set_state(job, "queued")

    def _fill(self) -> bool:
        """Submit waiting jobs while fewer than `window` are pending; whether any job is left."""
        while self.waiting and len(self.pending) < self.window:
            job, submit = self.waiting.popleft()
            self.waiting_ids.discard(job.id)
            submit()
        return bool(self.pending or self.waiting)

    def submit_train(self, tj: Job) -> None:
        self._enqueue(tj, lambda: self._send_train(tj))

    def submit_discover(self, job: Job, ckpt_ref) -> None:
        self._enqueue(job, lambda: self._send_discover(job, ckpt_ref))

    def _send_train(self, tj: Job) -> None:
        held = not tj.needs and self.checkpoints.hand_over(tj.id)  # a prune job takes no checkpoints
        rec_ref, self.ckpt_refs[tj.id] = self.submit.train(tj, [self.ckpt_refs[n] for n in tj.needs], held)
        self._pending(tj, rec_ref, [rec_ref])

    def _send_discover(self, job: Job, ckpt_ref) -> None:
        """One task, or (exact with resources.edge_chunk) chunk tasks of equal estimated work and a
        merge task that gets their scores."""
        from circuitry.workers.chunks import chunk_bounds

        n = self.n_edges_of.get(job.model_id, job.n_edges)
        chunk = self.spec.resources["edge_chunk"]
        if job.settings["method"] == "exact" and chunk and n > chunk:
            bounds = chunk_bounds(model_shape(self.jobs[job.model_id].settings), -(-n // chunk))
            parts = [self.submit.chunk(job, ckpt_ref, a, b) for a, b in bounds]
            ref = self.submit.merge(job, ckpt_ref, parts)
            self._pending(job, ref, [*parts, ref])
        else:
            ref = self.submit.discover(job, ckpt_ref)
            self._pending(job, ref, [ref])

    def _pending(self, job: Job, result_ref, refs: list) -> None:
        self.pending[result_ref] = job
        self.live[job.id] = refs
        self._set_state(job, "queued")

    def _model_ready(self, train_id: str) -> None:
        self.ready.add(train_id)
        for dj in self.children.get(train_id, []):
            if dj.id not in self.done_ids:
                self.submit_discover(dj, self.ckpt_refs[train_id])
        for pj in self.dependents.get(train_id, []):
            self._submit_if_ready(pj)

    def _submit_if_ready(self, pj: Job) -> None:
        """A prune job, once every model it reads is ready (and it is neither done, running nor skipped)."""
        if (pj.id not in self.done_ids and pj.id not in self.live and pj.id not in self.waiting_ids
                and self.state.get(pj.id) == "queued"
                and all(n in self.ready for n in pj.needs)):
            self.submit_train(pj)

    # ------------------------------------------------------------ collecting
    def _wait(self) -> list:
        """The refs that are ready now (waiting at most 0.25 s); drains progress events first."""
        ray, pending = self.ray, self.pending
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
        if ready:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        now = time.monotonic()
        if now - self.last_drain > 0.25 or ready:
            self._handle_events(ray.get(self.actor.drain.remote()))
            self.last_drain = now
        return ready

    def _collect(self, refs: list) -> None:
        """The finished tasks' results (or failures), handed on together."""
        results = []
        for ref in refs:
            job = self.pending.pop(ref)
            self.live.pop(job.id, None)
            try:
                results.append((job, self.ray.get(ref)))
            except self.ray.exceptions.TaskCancelledError:
                continue
            except Exception as e:  # noqa: BLE001 - the job failed after its retries
                self.on_failure(job, _short_error(e))
        self.on_results(results)

    def on_results(self, results: list[tuple[Job, JobResult]]) -> None:
        """Write the jobs' folders (the only writer; together, so their fsyncs overlap:
        orchestrator.store), then record each and release its dependents."""
        for job, result in results:
            result.record["attempts"] = max(1, self.attempts.get(job.id, 1))
        written = self.store.commit_many([(job.id, result) for job, result in results])
        for (job, _), rec in zip(results, written):
            if isinstance(rec, Exception):
                self.on_failure(job, f"its result could not be written to {self.store.root}: {_short_error(rec)}")
            else:
                self._finished(job, rec)

    def _finished(self, job: Job, rec: dict) -> None:
        self.out.finished += 1
        self._set_state(job, "finished")
        self.metrics.finished(job.kind, rec.get("duration_seconds") or 0.0, rec.get("peak_memory_bytes") or 0)
        self.recorder.add(rec)
        self.bar.note(f"finished {job.label} ({rec.get('duration_seconds', 0):.1f} s)", *self._counts())
        if job.kind == "train":
            self.checkpoints.finished(job.id)
            self.n_edges_of[job.id] = rec["figures"].get("n_edges", job.n_edges)
            self._drop_circuits_of_another_model(job)
            self._model_ready(job.id)

    def _drop_circuits_of_another_model(self, tj: Job) -> None:
        """A model trained again (its folder was damaged): its discover jobs' finished results
        stay if they were found on the same weights, else they are moved aside and run again."""
        kept = [dj for dj in self.children.get(tj.id, []) if dj.id in self.done_ids]
        if not kept:
            return
        from circuitry.workers.discover import model_id

        now = model_id(self.ray.get(self.ckpt_refs[tj.id]))
        for dj in kept:
            was = (self.existing[dj.id].get("figures") or {}).get("model_id")
            if was == now:
                continue
            aside = self.store.set_aside(self.store.folder(dj.id))
            self.echo(f"warning: {dj.label} was found on model {was}, but {tj.label} now gives model {now}; "
                      f"moved aside to {aside.relative_to(self.sweep_dir)}, the job runs again")
            self.done_ids.discard(dj.id)
            del self.existing[dj.id]
            self.out.cached -= 1
            self.state[dj.id] = "cached"  # its submission moves it from cached to queued

    def on_failure(self, job: Job, error: str) -> None:
        """Record the failure; the jobs that read a failed train job's model are skipped."""
        self.out.failed += 1
        self.out.failures.append((job.label, error))
        self.recorder.add({"job_id": job.id, "kind": job.kind, "label": job.label, "status": "failed",
                           "settings": job.settings, "model_id": job.model_id, "error": error,
                           "attempts": self.attempts.get(job.id, 0), "started_at": self.started_at.get(job.id),
                           "finished_at": time.time()})
        self.bar.note(f"FAILED {job.label}: {error}", *self._counts())
        self._set_state(job, "failed")
        self._skip_dependents(job, job)

    def _skip_dependents(self, job: Job, failed: Job) -> None:
        """Skip the unsubmitted jobs that read `job`'s model (discover jobs, prune jobs), and theirs."""
        if job.kind != "train":
            return
        for dj in self.children.get(job.id, []) + self.dependents.get(job.id, []):
            if dj.id not in self.done_ids and dj.id not in self.live and self.state.get(dj.id) == "queued":
                self.out.skipped += 1
                self._set_state(dj, "skipped")
                self.recorder.add({"job_id": dj.id, "kind": dj.kind, "label": dj.label, "status": "skipped",
                                   "settings": dj.settings, "model_id": dj.model_id,
                                   "error": f"its model ({failed.label}) failed", "finished_at": time.time()})
                self._skip_dependents(dj, failed)

    def cancel(self) -> None:
        """Ctrl-C: cancel every running task. Results the driver has not written are not results:
        the next run runs those jobs again."""
        self.out.interrupted = True
        self.waiting.clear()
        self.waiting_ids.clear()
        cancelled = [ref for refs in self.live.values() for ref in refs]
        for ref in cancelled:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
        # force-cancel kills workers asynchronously: wait until they are gone, so none still
        # reports progress into a next sweep on the same Ray
        try:
            self.ray.wait(cancelled, num_returns=len(cancelled), timeout=15)
        except Exception:  # noqa: BLE001
            pass
        self.store.clear_temp()  # a commit that Ctrl-C cut short (it removes its own, too)

    def _close(self, interrupted: bool, t_start: float) -> None:
        try:
            self._handle_events(self.ray.get(self.actor.drain.remote(), timeout=5))
        except Exception:  # noqa: BLE001
            pass
        t_last = time.monotonic()  # the metrics hold their final figures from here on
        self.bar.end(*self._counts())
        if self.pushgateway:
            failed = self.metrics.push(self.pushgateway)
            if failed:
                self.echo(f"warning: pushing the final metrics to the Pushgateway at {self.pushgateway} "
                          f"failed ({failed}); the sweep's results are not affected")
        status = "KILLED" if interrupted else ("FAILED" if self.out.failed else "FINISHED")
        behind = self.recorder.backlog()
        if behind and not interrupted:  # results came faster than MLflow logs them: say so, then catch up
            self.echo(f"MLflow: {behind} runs still to log to {self.uri}; waiting (Ctrl-C stops; "
                      f"`{sync_command(self.sweep_dir, self.uri)}` logs the rest later)")
        try:
            self.recorder.close(status, timeout=None if not interrupted else 30)
            self.out.mlflow_error = self.recorder.mlflow_error
            self.out.write_error = self.out.write_error or self.recorder.write_error
        except KeyboardInterrupt:  # the results are on disk; only MLflow is behind
            self.out.mlflow_error = f"stopped with {self.recorder.backlog()} runs not logged"
            self.echo(f"MLflow logging stopped with {self.recorder.backlog()} runs not logged; "
                      f"`{sync_command(self.sweep_dir, self.uri)}` logs them")
        self.out.seconds = time.monotonic() - t_start
        if not interrupted:  # a batch job's last figures must be scrapeable: serve them a while longer
            self.metrics.linger(self.metrics_linger - (time.monotonic() - t_last), self.echo)
        self.metrics.close()

    # ------------------------------------------------------------ progress
    def _set_state(self, job: Job, new: str) -> None:
        old = self.state.get(job.id)
        if old == new:  # a discover job is queued while it waits for its model, and stays so when submitted
            return
        self.metrics.move(job.kind, old, new)
        self.state[job.id] = new
        self.running += (new == "running") - (old == "running")

    def _counts(self):
        done = self.out.cached + self.out.finished
        return done, self.out.failed + self.out.skipped, self.running, self.metrics.edges_done

    def _handle_events(self, events) -> None:
        m = self.metrics
        for e in events:  # execute.Event
            jid = e.job_id
            job = self.jobs.get(jid)
            if e.name == "fault":
                keep_fault_marker(self.sweep_dir, jid, e.value)
                continue
            if e.name == "checkpoint":  # the actor's, as "fault": the job's newest state, to write
                self.checkpoints.write_newest(jid)
                continue
            m.worker_rss(e.pid, e.rss)
            if job is None:
                continue
            if e.name == "start":
                self.attempts[jid] = self.attempts.get(jid, 0) + 1
                self.started_at.setdefault(jid, time.time())
                if self.attempts[jid] > 1:
                    m.retried(e.kind)
                    self.out.retries += 1
                    self.bar.note(f"retrying {e.label} (attempt {self.attempts[jid]})", *self._counts())
                if self.state.get(jid) == "queued":
                    self._set_state(job, "running")
            elif e.name == "chunk":
                if self.state.get(jid) == "queued":
                    self._set_state(job, "running")
            elif e.name == "steps":
                m.train_progress(job.settings["task"], steps=e.value)
            elif e.name == "examples":
                m.train_progress(job.settings["task"], examples=e.value)
            elif e.name == "edges":
                m.edges_evaluated(job.settings["method"], e.value)
