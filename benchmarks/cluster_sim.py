"""A simulated cluster: the sweep driver (orchestrator.scheduler) taking the results of 1,000, 3,000
and 10,000 tiny jobs from a local Ray started with 1,000 logical CPUs. The jobs are the spec's
`[testing] noop` jobs (a finished record and one small file, no training), so what is measured is
the driver's side: every result fetched, its folder written (the one writer), its row recorded.

Per sweep size: wall time, results/s, the driver's CPU time per result (process CPU seconds over
the run / results: flat if nothing in the driver grows with the sweep), the time inside the
driver's result handling per result (on_results), the driver's peak resident memory during the
run and its growth, and "lost" (jobs of the spec without a row in jobs.parquet or a folder: must
be 0). MLflow is off here (benchmarks/mlflow_rate.py measures it).

This machine has 2 cores: Ray starts a worker process per task running at once, so each no-op job
asks `--cpus-per-job` (default 125) of the 1,000 logical CPUs, 8 at a time; 1,000 at once would be
1,000 worker processes.

    python benchmarks/cluster_sim.py                 # 1000, 3000, 10000 jobs
    python benchmarks/cluster_sim.py --sizes 200,500  # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def spec_text(name: str, root: Path, n: int, cpus: float) -> str:
    return (f'[sweep]\nname = "{name}"\nroot = "{root}"\nmetrics_port = -1\nmetrics_linger = 0\npictures = false\n'
            f'[train]\ntask = "independence"\nregime = "vanilla"\nsteps = 1\nseed = {list(range(n))}\n'
            f'[resources]\ntrain_cpus = {cpus}\n[testing]\nnoop = ["train"]\n')


class Peak:
    """The driver's resident memory, sampled every 50 ms."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self.stop = psutil.Process(), 0, threading.Event()
        self.start_rss = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def close(self) -> tuple[int, int]:
        self.stop.set()
        self.thread.join()
        return self.start_rss, max(self.peak, self.proc.memory_info().rss)


def run_size(n: int, root: Path, cpus: float) -> dict:
    import pandas as pd

    from circuitry.orchestrator.scheduler import Scheduler
    from circuitry.orchestrator.spec import parse_spec

    spec = parse_spec(spec_text(f"sim{n}", root, n, cpus), "cluster_sim")

    class Timed(Scheduler):
        handling = 0.0

        def on_results(self, results):
            t0 = time.perf_counter()
            super().on_results(results)
            Timed.handling += time.perf_counter() - t0

    Timed.handling = 0.0
    sched = Timed(spec, progress=False, record_mlflow=False, echo=lambda m: None)
    peak = Peak()
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = sched.run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rss0, rss_peak = peak.close()
    rows = pd.read_parquet(spec.sweep_dir / "jobs.parquet")
    ids = {j.id for j in spec.jobs}
    folders = {p.name for p in (spec.sweep_dir / "jobs").iterdir() if (p / "job.json").is_file()}
    lost = len(ids - (set(rows["job_id"]) & folders))
    return {"jobs": n, "finished": out.finished, "failed": out.failed, "seconds": seconds, "results_per_s": n / seconds,
            "driver_cpu_ms_per_result": 1000 * cpu / n, "handling_ms_per_result": 1000 * Timed.handling / n,
            "driver_rss_start_mib": rss0 / 2 ** 20, "driver_rss_peak_mib": rss_peak / 2 ** 20, "lost": lost}


def main() -> None:
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,3000,10000")
    ap.add_argument("--logical-cpus", type=int, default=1000)
    ap.add_argument("--cpus-per-job", type=float, default=125)
    args = ap.parse_args()
    from circuitry.orchestrator.ray_session import start_local_ray

    root = Path(tempfile.mkdtemp(prefix="cluster-sim-"))
    start_local_ray(args.logical_cpus)  # as `circuitry run --num-cpus` starts it (127.0.0.1, a per-run token)
    rows = []
    try:
        run_size(4 * int(args.logical_cpus // args.cpus_per_job), root / "warm-up", args.cpus_per_job)  # start the workers
        for n in [int(x) for x in args.sizes.split(",")]:
            row = run_size(n, root, args.cpus_per_job)
            rows.append(row)
            print(f"{n:6d} jobs: {row['seconds']:.1f} s, {row['results_per_s']:.0f} results/s, driver CPU "
                  f"{row['driver_cpu_ms_per_result']:.2f} ms/result (handling {row['handling_ms_per_result']:.2f}), "
                  f"driver RSS {row['driver_rss_start_mib']:.0f} -> peak {row['driver_rss_peak_mib']:.0f} MiB, "
                  f"lost {row['lost']}", flush=True)
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
