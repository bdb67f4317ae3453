"""A sweep of many tiny jobs, and a simulated cluster's result rate (benchmarks/orchestration.py
prints these rows; `python benchmarks/scale.py --jobs 2000` runs them alone).

1. A real sweep: N tiny jobs (half train, 20 steps of a 4-wide net; half ACDC on those models),
   `pictures = false`, MLflow off (measured apart below), Ray on 2 CPUs. Driver overhead per job
   is the driver process's CPU time (its threads included) over the jobs; a job's fixed cost is
   its duration in the worker minus its training (train_seconds) or discovery
   (discovery_seconds), the median over the sweep; driver memory is its resident size before
   and after. jobs.parquet: one rewrite of the N rows (the recorder rewrites it at most every
   2 s). MLflow: runs/s of the recorder's logger for these records, on the embedded SQLite store
   and on a lean local `mlflow server` (one worker, HTTP).
2. A simulated cluster: results arrive at R jobs/s (200: 100 workers of 0.5-s jobs) for a few
   seconds, each handed to the real driver path (Scheduler.on_results: the folder written with
   fsync, jobs.parquet, metrics, the MLflow queue on SQLite). Shown: the driver's time per result
   (it keeps up when that is under 1/R), the MLflow backlog when the last result arrived, and how
   long MLflow took after that to catch up.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray  # noqa: E402

from circuitry.orchestrator import remote  # noqa: E402
from circuitry.orchestrator.ray_session import start_local_ray  # noqa: E402
from circuitry.orchestrator.recorder import MlflowLogger, flat_row, read_records, write_parquet  # noqa: E402
from circuitry.orchestrator.scheduler import Scheduler  # noqa: E402
from circuitry.orchestrator.spec import parse_spec  # noqa: E402
from circuitry.orchestrator.store import JobResult  # noqa: E402


def tiny_spec(root: Path, name: str, n_models: int, discover: bool = True, tracking_uri: str = "") -> str:
    text = f"""
[sweep]
name = "{name}"
root = "{root}"
tracking_uri = "{tracking_uri}"
metrics_port = -1
metrics_linger = 0
pictures = false
[train]
task = "independence"
regime = "vanilla"
seed = {list(range(n_models))}
steps = 20
width = 4
log_every = 10
"""
    return text + ('[discover]\nmethod = "acdc"\nthreshold = 0.01\n' if discover else "")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def real_sweep(tmp: Path, n_jobs: int) -> dict:
    spec = parse_spec(tiny_spec(tmp, "scale", max(1, n_jobs // 2)))
    start_local_ray(2)
    try:
        Scheduler(parse_spec(tiny_spec(tmp, "warm", 2)), progress=False, record_mlflow=False,
                  echo=lambda m: None).run()  # warm workers and imports
        rss0, cpu0, t0 = _status_kib("VmRSS"), time.process_time(), time.perf_counter()
        out = Scheduler(spec, progress=False, record_mlflow=False, echo=lambda m: None).run()
        wall, cpu, rss1 = time.perf_counter() - t0, time.process_time() - cpu0, _status_kib("VmRSS")
    finally:
        ray.shutdown()
    assert out.failed == 0 and out.finished == len(spec.jobs), out.failures
    recs = list(read_records(spec.sweep_dir).values())
    fixed = {kind: statistics.median(r["duration_seconds"] - r["figures"][own] for r in recs if r["kind"] == kind)
             for kind, own in (("train", "train_seconds"), ("discover", "discovery_seconds"))}
    rows = [flat_row(r) for r in recs]
    t = time.perf_counter()
    write_parquet(rows, tmp / "jobs.parquet")
    parquet_s = time.perf_counter() - t
    return {"jobs": len(spec.jobs), "wall": wall, "driver_cpu_per_job": cpu / len(spec.jobs), "fixed": fixed,
            "rss_before": rss0 * 1024, "rss_after": rss1 * 1024, "parquet_s": parquet_s, "records": recs,
            "sweep_dir": spec.sweep_dir}


def fixed_cost_with_pictures(tmp: Path, n: int = 3) -> dict:
    """A tiny job's fixed cost in this process with and without pictures (median of n)."""
    import torch

    from circuitry.orchestrator import execute

    torch.set_num_threads(1)
    spec = parse_spec(tiny_spec(tmp, "pics", 1))
    tj, dj = spec.train_jobs()[0], spec.discover_jobs()[0]
    out = {}
    for pictures in (True, False):
        tr, di = [], []
        for _ in range(n + 1):
            res, ckpt = execute.execute_train(tj, pictures=pictures)
            tr.append(res.record["duration_seconds"] - res.record["figures"]["train_seconds"])
            d = execute.execute_discover(dj, ckpt, pictures=pictures)
            di.append(d.record["duration_seconds"] - d.record["figures"]["discovery_seconds"])
        out[pictures] = (statistics.median(tr[1:]), statistics.median(di[1:]))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(tmp: Path):
    """A lean local tracking server (one worker, no job execution): (process, uri)."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
                             "--artifacts-destination", str(tmp / "server-artifacts")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(600):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            return proc, uri
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("mlflow server exited")
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("mlflow server did not start")


def mlflow_rate(uri: str, sweep_dir: Path, records: list[dict], name: str) -> float:
    """Runs per second of the recorder's logger for these records (their artifacts included)."""
    logger = MlflowLogger(uri, name, sweep_dir)
    t = time.perf_counter()
    for rec in records:
        logger.log_job(rec, replace=True)
    return len(records) / (time.perf_counter() - t)


def simulated_cluster(tmp: Path, rate: float, seconds: float, tracking_uri: str = "") -> dict:
    """Results of tiny train jobs handed to the driver's path at `rate` a second (module doc)."""
    from circuitry.orchestrator import execute

    n = int(rate * seconds)
    spec = parse_spec(tiny_spec(tmp, "cluster", n, discover=False, tracking_uri=tracking_uri))
    template, _ = execute.execute_train(spec.train_jobs()[0], pictures=False)
    start_local_ray(1)
    try:
        sched = Scheduler(spec, progress=False, echo=lambda m: None)
        sched.ray, sched.remote = ray, remote
        sched.sweep_dir.mkdir(parents=True)
        sched._prepare_folder()
        sched._start()
        time.sleep(2)  # the MLflow logger is ready (experiment, parent run)
        jobs, busy, i, t0 = spec.train_jobs(), 0.0, 0, time.perf_counter()
        while i < n:  # as the driver's loop: take every result that has arrived, hand them on together
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            t = time.perf_counter()
            arrived = min(n, int((t - t0) * rate) + 1)
            batch = [(job, JobResult({**template.record, "job_id": job.id, "label": job.label,
                                      "settings": job.settings, "finished_at": time.time()}, template.files))
                     for job in jobs[i:arrived]]
            sched.on_results(batch)
            sched.recorder.flush_parquet()
            busy += time.perf_counter() - t
            i = arrived
        arrived = time.perf_counter()
        lag_at_end = sched.recorder.backlog()
        sched._close(False, t0)
        caught_up = time.perf_counter() - arrived
        logged = sched.recorder.logged
    finally:
        ray.shutdown()
    return {"n": n, "rate": rate, "arrival_s": arrived - t0, "driver_per_result": busy / n,
            "backlog": lag_at_end, "catch_up_s": caught_up, "logged": logged}


def print_rows(n_jobs: int, rate: float = 200.0, seconds: float = 5.0, mlflow_runs: int = 200) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="circuitry-scale-"))
    server = None
    try:
        r = real_sweep(tmp, n_jobs)
        pics = fixed_cost_with_pictures(tmp)
        recs = r["records"][:mlflow_runs]
        sqlite_rate = mlflow_rate(f"sqlite:///{tmp / 'bench.db'}", r["sweep_dir"], recs, "rate")
        try:
            server, uri = mlflow_server(tmp)
            http_rate = mlflow_rate(uri, r["sweep_dir"], recs, "rate")
        except Exception as e:  # noqa: BLE001 - report, don't fail the other rows
            http_rate, uri = float("nan"), f"failed: {e}"
        print(f"\nscale: {r['jobs']} tiny jobs (half train 20 steps width 4, half acdc), Ray on 2 CPUs, "
              f"pictures off, MLflow off")
        print("| figure | value | goal |")
        print("| --- | --- | --- |")
        print(f"| sweep wall / jobs per second | {r['wall']:.1f} s / {r['jobs'] / r['wall']:.1f} | |")
        print(f"| driver overhead per job (driver CPU time / jobs) | {1000 * r['driver_cpu_per_job']:.1f} ms | <= 5 ms |")
        print(f"| fixed cost per train job (duration - train_seconds), median | {1000 * r['fixed']['train']:.0f} ms | <= 50 ms |")
        print(f"| fixed cost per acdc job (duration - discovery_seconds), median | {1000 * r['fixed']['discover']:.0f} ms | <= 50 ms |")
        print(f"| the same in one process, pictures on: train / acdc | {1000 * pics[True][0]:.0f} / {1000 * pics[True][1]:.0f} ms | |")
        print(f"| the same in one process, pictures off: train / acdc | {1000 * pics[False][0]:.0f} / {1000 * pics[False][1]:.0f} ms | |")
        print(f"| jobs.parquet rewrite, {r['jobs']} rows (at most every 2 s) | {1000 * r['parquet_s']:.0f} ms | |")
        print(f"| driver memory before / after the sweep | {r['rss_before'] / 2**20:.0f} / {r['rss_after'] / 2**20:.0f} MiB | |")
        print(f"| MLflow logging, embedded SQLite ({len(recs)} runs) | {sqlite_rate:.0f} runs/s | |")
        print(f"| MLflow logging, local `mlflow server --workers 1` over HTTP ({len(recs)} runs) | {http_rate:.0f} runs/s | |")
        if server is not None:
            server.terminate()
            server.wait(10)
            server = None
        c = simulated_cluster(tmp, rate, seconds)
        keeps = "keeps up" if c["driver_per_result"] < 1 / rate else "falls behind"
        print(f"\nsimulated cluster: {c['n']} results at {c['rate']:.0f} jobs/s (100 workers of 0.5-s jobs), "
              f"real driver path, MLflow on SQLite")
        print("| figure | value |")
        print("| --- | --- |")
        print(f"| driver time per result (folder with fsync, parquet, metrics, queue) | "
              f"{1000 * c['driver_per_result']:.2f} ms ({keeps}: budget {1000 / rate:.0f} ms) |")
        print(f"| results arrived over | {c['arrival_s']:.1f} s |")
        print(f"| MLflow runs still to log when the last result arrived | {c['backlog']} of {c['n']} |")
        print(f"| MLflow caught up after the last result | {c['catch_up_s']:.1f} s ({c['logged']} runs logged) |")
    finally:
        if server is not None:
            server.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    print_rows(args.jobs, args.rate, args.seconds)


if __name__ == "__main__":
    main()
