"""Orchestration overhead and exact-scoring fan-out.

1. Per-job overhead of the Ray path (orchestrator.scheduler: Ray tasks, progress actor, ray.wait
   loop, jobs.parquet; MLflow off, it runs on its own thread) against calling the same job
   functions (orchestrator.execute) in a plain loop. Ray gets 1 CPU so both run the jobs one after
   another; workers are warmed up first. Goal: <= 20 ms a job.
2. `exact` on a wider model: one pass in this process, then the edge list fanned out in chunks
   over a local Ray with 1 and with 2 CPUs.

    python benchmarks/orchestration.py [--jobs 12] [--width 256]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import ray  # noqa: E402
import torch  # noqa: E402

from orchestrator import execute  # noqa: E402
from orchestrator.ray_session import start_local_ray  # noqa: E402
from orchestrator.scheduler import Scheduler  # noqa: E402
from orchestrator.spec import parse_spec  # noqa: E402


def spec_text(root, name, seeds, steps, methods, width, chunk=0, tasks=("independence",)):
    return f"""
[sweep]
name = "{name}"
root = "{root}"
metrics_port = -1
[train]
task = {list(tasks)!r}
regime = "vanilla"
seed = {list(seeds)!r}
steps = {steps}
width = {width}
log_every = 10
[discover]
method = {list(methods)!r}
threshold = 0.01
[resources]
edge_chunk = {chunk}
""".replace("'", '"')


def run_sched(spec):
    t = time.perf_counter()
    out = Scheduler(spec, progress=False, record_mlflow=False, echo=lambda m: None).run()
    assert out.failed == 0, out.failures
    return time.perf_counter() - t, out


def plain_loop(spec):
    t = time.perf_counter()
    ckpts = {}
    for j in spec.train_jobs():
        _, ckpts[j.id] = execute.execute_train(j, spec.sweep_dir)
    for j in spec.discover_jobs():
        execute.execute_discover(j, spec.sweep_dir, ckpts[j.model_id])
    return time.perf_counter() - t


def overhead(tmp: Path, n_seeds: int):
    """Wall of both paths at n and 3n jobs: the per-job overhead is the slope of the difference
    (the sweep's fixed cost, folder/recorder/actor setup, is the rest)."""
    sizes = (n_seeds, 3 * n_seeds)
    ray_s, loop_s = {}, {}
    start_local_ray(1)
    try:
        run_sched(parse_spec(spec_text(tmp / "warm", "w", [1000], 5, ["acdc"], 4)))  # warm the worker
        for n in sizes:
            ray_s[n], _ = run_sched(parse_spec(spec_text(tmp / f"ray{n}", "o", list(range(n)), 5, ["acdc"], 4)))
    finally:
        ray.shutdown()
    torch.set_num_threads(1)
    plain_loop(parse_spec(spec_text(tmp / "warm2", "w", [1000], 5, ["acdc"], 4)))  # warm imports
    for n in sizes:
        loop_s[n] = plain_loop(parse_spec(spec_text(tmp / f"loop{n}", "o", list(range(n)), 5, ["acdc"], 4)))
    a, b = sizes
    per_job = ((ray_s[b] - loop_s[b]) - (ray_s[a] - loop_s[a])) / (2 * (b - a))
    fixed = (ray_s[a] - loop_s[a]) - per_job * 2 * a
    return [(2 * n, loop_s[n], ray_s[n]) for n in sizes], per_job, fixed


def exact_fanout(tmp: Path, width: int):
    from workers.discover import discover
    from workers.model import load_checkpoint

    base = parse_spec(spec_text(tmp / "x", "x", [0], 20, [], width, tasks=("two_moons",)).replace(
        "[discover]\nmethod = []\nthreshold = 0.01\n", ""))
    start_local_ray(1)
    try:
        run_sched(base)
    finally:
        ray.shutdown()
    tj = base.train_jobs()[0]
    ckpt = load_checkpoint(base.sweep_dir / "jobs" / tj.id / "model.pt")
    n_edges = sum(w.numel() for w in ckpt["weights"])
    torch.set_num_threads(1)
    t = time.perf_counter()
    discover(ckpt, "exact", 0.01)
    one_pass = time.perf_counter() - t
    chunk = -(-n_edges // 4)
    rows = []
    for cpus in (1, 2):
        root = tmp / f"x{cpus}"
        spec = parse_spec(spec_text(root, "x", [0], 20, ["exact"], width, chunk=chunk, tasks=("two_moons",)))
        (spec.sweep_dir / "jobs").mkdir(parents=True)
        shutil.copytree(base.sweep_dir / "jobs" / tj.id, spec.sweep_dir / "jobs" / tj.id)  # model: cached
        start_local_ray(cpus)
        try:
            run_sched(parse_spec(spec_text(tmp / f"w{cpus}", "w", [1], 5, ["exact"], 4, chunk=10)))  # warm workers
            wall, _ = run_sched(spec)
        finally:
            ray.shutdown()
        from orchestrator.recorder import read_records

        rec = next(r for r in read_records(spec.sweep_dir).values() if r["kind"] == "discover")
        rows.append((cpus, wall, rec["figures"]["discovery_seconds"], rec["duration_seconds"]))
    return n_edges, chunk, one_pass, rows


@ray.remote
def _spin(n):
    x = 0
    for i in range(n):
        x += i
    return x


def parallelism() -> float:
    """What 2 workers buy on this machine now: time of 2 CPU-bound tasks on 2 workers over 1 task
    (1.0 = perfect parallelism; 2.0 = the cores are taken by something else)."""
    start_local_ray(2)
    try:
        ray.get([_spin.remote(10) for _ in range(2)])
        t = time.perf_counter()
        ray.get(_spin.remote(5_000_000))
        one = time.perf_counter() - t
        t = time.perf_counter()
        ray.get([_spin.remote(5_000_000) for _ in range(2)])
        return (time.perf_counter() - t) / one
    finally:
        ray.shutdown()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=12, help="jobs in the overhead test (half train, half acdc)")
    ap.add_argument("--width", type=int, default=256, help="hidden width of the exact-scoring model")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="circuitry-bench-"))
    try:
        rows, per_job, fixed = overhead(tmp, max(1, args.jobs // 2))
        print("per-job overhead (tiny train + acdc jobs; Ray on 1 CPU vs the same functions in a plain loop)")
        print("| jobs | plain loop s | Ray sweep s | (Ray - loop) / job, ms |")
        print("| --- | --- | --- | --- |")
        for n, loop_s, ray_s in rows:
            print(f"| {n} | {loop_s:.2f} | {ray_s:.2f} | {1000 * (ray_s - loop_s) / n:.1f} |")
        print(f"marginal overhead per job: {1000 * per_job:.1f} ms (goal <= 20); fixed cost per sweep: {fixed:.2f} s")
        n_edges, chunk, one_pass, rows = exact_fanout(tmp, args.width)
        print(f"\nexact scoring, two_moons width {args.width}: {n_edges} edges, chunks of {chunk}")
        print("| run | scoring s (chunks) | job s (chunks + merge + files) | sweep wall s | scoring speed-up |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| one pass, in process | {one_pass:.2f} | | | |")
        print(f"(machine check: 2 CPU-bound tasks on 2 workers took {parallelism():.2f}x one task; "
              "1.0 = two free cores)")
        s1 = rows[0][2]
        for cpus, wall, scoring, job_s in rows:
            print(f"| Ray, {cpus} worker{'s' if cpus > 1 else ''} | {scoring:.2f} | {job_s:.2f} | {wall:.2f} | {s1 / scoring:.2f}x |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
