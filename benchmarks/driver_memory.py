"""The sweep driver's memory per job of the spec, at 10,000 and 100,000 jobs (issue 28).

What the driver holds for every job of a spec, for the whole sweep: the parsed spec's Job (its
settings, id, label), the scheduler's per-job maps (jobs, states, the queue of ready jobs waiting
for the submission window) and, once the job is done, its jobs.parquet row in the recorder. What
Ray holds in the driver per *pending* task is bounded by the window (orchestrator.scheduler:
SUBMIT_WINDOW, or 4 per cluster CPU), whatever the spec's size, so it is no part of the growth.
A job here is a train job of the smallest grid point (independence, 5 steps): no job runs; the
figures of its row are the ~25 a finished train job records.

Each size runs in a fresh process: resident set size (VmRSS) after the imports, then after the
spec is parsed, the scheduler built, every job queued and every job's row recorded; bytes per job
= the growth over the jobs. Also shown: the time to count the jobs without building them
(orchestrator.count) and to build them. `python benchmarks/driver_memory.py [--jobs 10000 100000]`
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SPEC = """
[sweep]
name = "mem"
root = "{root}"
metrics_port = -1
max_jobs = {n}
[train]
task = "independence"
regime = "vanilla"
seed = {seeds}
steps = 5
"""

FIGURES = {k: 0.125 for k in ("test_loss", "train_loss", "test_accuracy", "connection_cost", "n_edges",
                              "weights_nonzero", "steps_per_second", "train_seconds", "modularity", "swaps",
                              "edges_alive", "neurons_alive", "final_lam", "peak_rss", "flops", "params",
                              "sparsity", "l1", "wire_length", "bias_cost", "lr", "batch", "steps_done",
                              "seconds_total", "model_bytes")}


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def measure(n: int) -> None:
    """One size, in this process: prints `n rss0 rss1 count_s build_s`."""
    import gc
    from collections import deque

    from circuitry.orchestrator.count import count_jobs
    from circuitry.orchestrator.recorder import Recorder, flat_row
    from circuitry.orchestrator.scheduler import Scheduler
    from circuitry.orchestrator.spec import parse_spec

    text = SPEC.format(root="/nonexistent", n=n, seeds=list(range(n)))
    gc.collect()
    before = rss()
    t = time.perf_counter()
    spec = parse_spec(text)  # counts first (orchestrator.count), then builds the jobs
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    count = count_jobs(spec.train, spec.discover)
    count_s = time.perf_counter() - t
    assert count.total == len(spec.jobs) == n
    sched = Scheduler(spec, metrics_port=-1, progress=False, record_mlflow=False, echo=lambda m: None)
    sched.state, sched.running = {}, 0
    waiting = deque()
    for job in spec.jobs:  # what _start and _enqueue keep per job
        sched._set_state(job, "queued")
        waiting.append((job, lambda job=job: job))
    recorder = Recorder(Path("/nonexistent"), "mem", "", mlflow_enabled=False)
    for i, job in enumerate(spec.jobs):  # the recorder's row of every finished job, its own figures
        sched._set_state(job, "finished")
        figures = {k: v + i * 1e-9 for k, v in FIGURES.items()}
        recorder._keep(flat_row({"job_id": job.id, "kind": job.kind, "label": job.label, "status": "finished",
                                 "settings": job.settings, "figures": figures, "duration_seconds": 0.5 + i * 1e-9,
                                 "attempts": 1, "finished_at": time.time()}))
    waiting.clear()  # submitted: no longer waiting
    gc.collect()
    print(n, before, rss(), count_s, build_s, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        measure(args.one)
        return
    print("| jobs | driver RSS growth | bytes per job | count (no jobs built) | parse + build |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n in args.jobs:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        _, before, after, count_s, build_s = out.stdout.split()
        grow = int(after) - int(before)
        print(f"| {n:,} | {grow / 2**20:.0f} MiB | {grow / n:,.0f} | {float(count_s) * 1000:.1f} ms | "
              f"{float(build_s):.1f} s |")


if __name__ == "__main__":
    main()
