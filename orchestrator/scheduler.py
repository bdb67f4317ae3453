"""Running a sweep's job graph on Ray.

Train jobs and discover jobs are Ray tasks with resource requests (GPUs only where the cluster has
them) and retries (`resources.max_retries`: on worker death and on TransientError). A discover job
is submitted the moment its model exists (its train job finished now or in an earlier run); its
checkpoint travels through the object store. `exact` on a model with more than
`resources.edge_chunk` edges fans out into chunk tasks whose scores a merge task assembles (Ray
starts the merge when the last chunk is done). The driver loops over `ray.wait`, drains the
progress actor into Prometheus, records finished jobs (jobs.parquet + MLflow) and draws progress.

Resume: a job whose folder SWEEP/jobs/<id>/ exists is finished and never runs again; re-running a
spec after a crash, a Ctrl-C or with more grid points runs only the rest. Ctrl-C cancels the
running tasks (their half-written .tmp- folders are removed by the next run) and leaves the sweep
resumable. One driver per sweep folder at a time (SWEEP/.lock).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.execute import TransientError, job_dir
from orchestrator.metrics import ProgressBar, SweepMetrics
from orchestrator.recorder import Recorder, read_records, resolve_uri
from orchestrator.spec import Job, Spec


class SweepBusy(RuntimeError):
    pass


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
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return self.finished + self.failed


def _short_error(e: BaseException) -> str:
    """One line: the original exception of a RayTaskError, else the Ray error's first line."""
    cause = getattr(e, "cause", None)
    err = cause if isinstance(cause, BaseException) else e
    first = next((t.strip() for t in str(err).splitlines() if t.strip()), "")
    return f"{type(err).__name__}: {first}"[:500]


class Scheduler:
    def __init__(self, spec: Spec, *, tracking_uri: str | None = None, metrics_port: int | None = None,
                 metrics_host: str | None = None, progress: bool = True, record_mlflow: bool = True, echo=None):
        self.spec = spec
        self.sweep_dir = spec.sweep_dir.resolve()
        self.uri = resolve_uri(self.sweep_dir, tracking_uri or spec.tracking_uri)
        self.metrics_port = spec.metrics_port if metrics_port is None else metrics_port
        self.metrics_host = metrics_host or spec.metrics_host
        self.progress = progress
        self.record_mlflow = record_mlflow
        self.echo = echo or (lambda m: print(m, flush=True))
        self.metrics = SweepMetrics(spec.name)
        self.jobs = {j.id: j for j in spec.jobs}

    # ------------------------------------------------------------ setup
    def _prepare_folder(self) -> None:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / "jobs").mkdir(exist_ok=True)
        self._lock = open(self.sweep_dir / ".lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SweepBusy(f"{self.sweep_dir} is being run by another `circuitry run`; wait for it "
                            "or stop it first") from None
        for tmp in (self.sweep_dir / "jobs").glob(".tmp-*"):  # half-written results of a crash
            shutil.rmtree(tmp, ignore_errors=True)
        meta = {"name": self.spec.name, "tracking_uri": self.uri, "n_jobs": len(self.spec.jobs)}
        (self.sweep_dir / "sweep.json").write_text(json.dumps(meta, indent=2))
        (self.sweep_dir / "spec.toml").write_text(self.spec.source)

    # ------------------------------------------------------------ the run
    def run(self) -> SweepOutcome:
        import ray

        from orchestrator import remote

        t_start = time.monotonic()
        self._prepare_folder()
        try:
            return self._run(ray, remote, t_start)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def _run(self, ray, remote, t_start) -> SweepOutcome:
        spec, res = self.spec, self.spec.resources
        out = SweepOutcome(self.sweep_dir, self.uri, len(spec.jobs))
        existing = read_records(self.sweep_dir)
        done_ids = {jid for jid in existing if jid in self.jobs}
        out.cached = len(done_ids)

        m = self.metrics
        m.set_total(len(spec.jobs))
        for kind in ("train", "discover"):
            m.move(kind, None, "cached", sum(1 for j in done_ids if self.jobs[j].kind == kind))
        out.metrics_port = m.serve(self.metrics_port, self.metrics_host)
        if out.metrics_port:
            host = self.metrics_host
            shown = f"[{host}]" if ":" in host else host
            where = " (every interface of this node)" if host in ("0.0.0.0", "::") else ""
            self.echo(f"metrics: http://{shown}:{out.metrics_port}/metrics{where}")

        recorder = Recorder(self.sweep_dir, spec.name, self.uri,
                            {"n_jobs": len(spec.jobs), "spec": spec.source, "sweep_dir": str(self.sweep_dir)},
                            mlflow_enabled=self.record_mlflow, warn=self.echo)
        recorder.start(existing)

        gpus = ray.cluster_resources().get("GPU", 0) > 0
        faults = spec.testing if (spec.testing["transient_once"] or spec.testing["crash_once"]) else None
        retry = {"max_retries": res["max_retries"], "retry_exceptions": [TransientError]}
        t_opts = {"num_cpus": res["train_cpus"], "num_gpus": res["train_gpus"] if gpus else 0, **retry}
        d_opts = {"num_cpus": res["discover_cpus"], "num_gpus": res["discover_gpus"] if gpus else 0, **retry}
        device = "cuda" if gpus and res["train_gpus"] > 0 else "cpu"
        sweep = str(self.sweep_dir)
        actor = remote.progress_actor()

        state: dict[str, str] = {}
        attempts: dict[str, int] = {}
        pending: dict = {}  # ObjectRef -> job
        live: dict[str, list] = {}  # job id -> every ref to cancel on Ctrl-C
        ckpt_refs: dict[str, object] = {}
        n_edges_of: dict[str, int] = {}
        children: dict[str, list[Job]] = {}
        for j in spec.discover_jobs():
            children.setdefault(j.model_id, []).append(j)

        def set_state(job: Job, new: str) -> None:
            m.move(job.kind, state.get(job.id), new)
            state[job.id] = new

        def submit_discover(job: Job, ckpt_ref) -> None:
            jd = asdict(job)
            cpus = res["discover_cpus"]
            n = n_edges_of.get(job.model_id, job.n_edges)
            chunk = res["edge_chunk"]
            if job.settings["method"] == "exact" and chunk and n > chunk:
                parts = [remote.submit("chunk", d_opts, cpus, actor, jd, ckpt_ref, a, min(a + chunk, n))[0]
                         for a in range(0, n, chunk)]
                ref = remote.submit("merge", d_opts, cpus, actor, jd, sweep, ckpt_ref, faults, *parts)[0]
                live[job.id] = parts + [ref]
            else:
                ref = remote.submit("discover", d_opts, cpus, actor, jd, sweep, ckpt_ref, faults)[0]
                live[job.id] = [ref]
            pending[ref] = job
            set_state(job, "queued")

        def model_ready(train_id: str, ckpt_ref) -> None:
            for dj in children.get(train_id, []):
                if dj.id not in done_ids:
                    submit_discover(dj, ckpt_ref)

        # submit: unfinished train jobs; discover jobs whose model is already on disk
        for tj in spec.train_jobs():
            if tj.id in done_ids:
                todo = [dj for dj in children.get(tj.id, []) if dj.id not in done_ids]
                if todo:
                    from workers.model import load_checkpoint

                    ckpt_refs[tj.id] = ray.put(load_checkpoint(job_dir(self.sweep_dir, tj.id) / "model.pt"))
                    n_edges_of[tj.id] = existing[tj.id]["figures"].get("n_edges", tj.n_edges)
                    model_ready(tj.id, ckpt_refs[tj.id])
                continue
            rec_ref, ckpt_ref = remote.submit("train", t_opts, res["train_cpus"], actor, asdict(tj), sweep, faults,
                                              device)
            ckpt_refs[tj.id] = ckpt_ref
            pending[rec_ref] = tj
            live[tj.id] = [rec_ref]
            set_state(tj, "queued")
        for dj in spec.discover_jobs():  # waiting for a model: count as queued
            if dj.id not in done_ids and dj.id not in state:
                set_state(dj, "queued")

        to_run = len(spec.jobs) - out.cached
        self.echo(f"sweep {spec.name}: {len(spec.jobs)} jobs, {out.cached} already finished, {to_run} to run "
                  f"-> {self.sweep_dir}")
        bar = ProgressBar(len(spec.jobs), enabled=self.progress)

        def counts():
            done = out.cached + out.finished
            running = sum(1 for s in state.values() if s == "running")
            return done, out.failed + out.skipped, running, m.edges_done

        def handle_events(events) -> None:
            for event, jid, kind, label, value, pid, rss in events:
                m.worker_rss(pid, rss)
                job = self.jobs.get(jid)
                if job is None:
                    continue
                if event == "start":
                    attempts[jid] = attempts.get(jid, 0) + 1
                    if attempts[jid] > 1:
                        m.retried(kind)
                        out.retries += 1
                        bar.note(f"retrying {label} (attempt {attempts[jid]})", *counts())
                    if state.get(jid) == "queued":
                        set_state(job, "running")
                elif event == "chunk":
                    if state.get(jid) == "queued":
                        set_state(job, "running")
                elif event == "steps":
                    m.steps.labels(job.settings["task"]).inc(value)
                elif event == "examples":
                    m.examples.labels(job.settings["task"]).inc(value)
                elif event == "edges":
                    m.edges_evaluated(job.settings["method"], value)

        def fail(job: Job, error: str, status: str = "failed") -> None:
            if status == "failed":
                out.failed += 1
                out.failures.append((job.label, error))
                rec = {"job_id": job.id, "kind": job.kind, "label": job.label, "status": "failed",
                       "settings": job.settings, "model_id": job.model_id, "error": error,
                       "attempts": attempts.get(job.id, 0), "finished_at": time.time()}
                recorder.add(rec)
                bar.note(f"FAILED {job.label}: {error}", *counts())
            else:
                out.skipped += 1
            set_state(job, status)
            if job.kind == "train":
                for dj in children.get(job.id, []):
                    if dj.id not in done_ids and state.get(dj.id) == "queued":
                        out.skipped += 1
                        set_state(dj, "skipped")
                        recorder.add({"job_id": dj.id, "kind": dj.kind, "label": dj.label, "status": "skipped",
                                      "settings": dj.settings, "model_id": dj.model_id,
                                      "error": f"its model ({job.label}) failed", "finished_at": time.time()})

        last_drain = 0.0
        interrupted = False
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
                if ready:
                    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                now = time.monotonic()
                if now - last_drain > 0.25 or ready:
                    handle_events(ray.get(actor.drain.remote()))
                    last_drain = now
                for ref in ready:
                    job = pending.pop(ref)
                    live.pop(job.id, None)
                    try:
                        rec = ray.get(ref)
                    except ray.exceptions.TaskCancelledError:
                        continue
                    except Exception as e:  # noqa: BLE001 - the job failed after its retries
                        fail(job, _short_error(e))
                        continue
                    rec["attempts"] = max(1, attempts.get(job.id, 1))
                    out.finished += 1
                    set_state(job, "finished")
                    m.finished(job.kind, rec.get("duration_seconds") or 0.0, rec.get("peak_memory_bytes") or 0)
                    recorder.add(rec)
                    bar.note(f"finished {job.label} ({rec.get('duration_seconds', 0):.1f} s)", *counts())
                    if job.kind == "train":
                        n_edges_of[job.id] = rec["figures"].get("n_edges", job.n_edges)
                        model_ready(job.id, ckpt_refs[job.id])
                bar.draw(*counts())
                recorder.flush_parquet()
        except KeyboardInterrupt:
            interrupted = True
            out.interrupted = True
            cancelled = [ref for refs in live.values() for ref in refs]
            for ref in cancelled:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
            # force-cancel kills workers asynchronously: wait until they are gone, so none is
            # still writing when we (or the next run) clear their half-written .tmp- folders
            try:
                ray.wait(cancelled, num_returns=len(cancelled), timeout=15)
            except Exception:  # noqa: BLE001
                pass
            for tmp in (self.sweep_dir / "jobs").glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            try:
                handle_events(ray.get(actor.drain.remote(), timeout=5))
            except Exception:  # noqa: BLE001
                pass
            bar.end(*counts())
            status = "KILLED" if interrupted else ("FAILED" if out.failed else "FINISHED")
            recorder.close(status, timeout=None if not interrupted else 30)
            out.mlflow_error = recorder.mlflow_error
            m.close()
            out.seconds = time.monotonic() - t_start
        return out


def run_sweep(spec: Spec, **kwargs) -> SweepOutcome:
    return Scheduler(spec, **kwargs).run()
