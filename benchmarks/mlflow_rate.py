"""MLflow recording rate over HTTP: runs/s a sweep's Recorder logs to a real `mlflow server`, on a
SQLite store and on a PostgreSQL one, with one logging thread (how the Recorder logged before
orchestrator.mlflow_pool: one run after another) and with a pool.

Each run is a train job's record as a sweep logs it: ~25 params, 17 figures, a 21-point loss
curve, the job's tags; with --artifacts its folder too (metrics.json, model.pt, job.json, ~14 kB,
one upload each). Rates are timed from the first result handed to the Recorder to the last run
logged (Recorder.close), the rows side by side in one process against one server; every run is
counted back from the server afterwards ("lost" must be 0). The server's CPU time per run (its
processes' user + system time) is printed too: on a shared machine the rate depends on what else
runs, the CPU a run costs does not, and cores / that cost is the server's ceiling.

    python benchmarks/mlflow_rate.py                   # SQLite and PostgreSQL (when installed), 1 vs 8 threads
    python benchmarks/mlflow_rate.py --runs 400 --stores sqlite --threads 1,4,8,16

PostgreSQL: the server binaries (apt-get install postgresql; found under /usr/lib/postgresql/*/bin)
and psycopg2 (pip install psycopg2-binary) in this environment; the cluster is a throwaway one in
a temporary folder, started as the `postgres` user when run as root, on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(store_uri: str, base: Path, workers: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    subprocess.run([str(BIN / "mlflow"), "db", "upgrade", store_uri], env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = free_port()
    log = open(base / "mlflow-server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", store_uri,
                             "--artifacts-destination", str(base / "mlartifacts"), "--serve-artifacts",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK":
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("mlflow server did not start: " + (base / "mlflow-server.log").read_text()[-2000:])
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started, nothing else
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


class Postgres:
    """A throwaway PostgreSQL cluster in `base`, on 127.0.0.1:port, trust authentication."""

    def __init__(self, base: Path):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")
        self.bin = Path(bins[-1]).parent
        self.data, self.port = base / "pgdata", free_port()
        self.user = "postgres" if os.geteuid() == 0 else None  # the server refuses to run as root
        base.mkdir(parents=True, exist_ok=True)
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(base, pw.pw_uid, pw.pw_gid)
            base.parent.chmod(0o711)  # mkdtemp's folder is private; the postgres user must pass through it
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(base / "pg.log"), "-w", "start",
                   "-o", f"-p {self.port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=on"])
        self._run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlflow"])
        self.uri = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"  # SQLAlchemy 2.1 would pick psycopg 3

    def _run(self, cmd: list[str]) -> None:
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])


def train_record(i: int, sweep_dir: Path, artifacts: bool) -> dict:
    """A record shaped like a train job's (orchestrator.execute), and its folder when `artifacts`."""
    jid = f"{i:016x}"
    settings = {"task": "independence", "regime": "bimt", "seed": i, "steps": 2000, "lam": 0.001, "width": 20,
                "swap_every": 200, "lr": 0.002, "batch_size": 0, "log_every": 100, "device": "cpu",
                **{f"recipe_{k}": v for k, v in zip("abcdefghijklmn", range(14))}}
    figures = {k: 0.1 * (i + 1) + j for j, k in enumerate(
        ["connection_cost", "test_loss", "train_loss", "steps_per_second", "train_seconds", "swap_seconds",
         "swap_share", "neurons_swapped", "n_parameters", "peak_memory_bytes", "peak_memory_delta_bytes",
         "inference_per_second_batch1", "inference_per_second_batch1024", "train_examples",
         "weights_above_1e-2", "weights_above_5e-2", "weights_above_1e-1"])}
    now = time.time()
    rec = {"job_id": jid, "kind": "train", "label": f"independence/bimt/s{i}/steps2000", "status": "finished",
           "settings": settings, "model_id": None, "version": "bench", "figures": figures,
           "duration_seconds": 1.0, "peak_memory_bytes": 2 ** 20, "attempts": 1, "finished_at": now,
           "curve": [{"step": s, "train_loss": 1 / (s + 1), "test_loss": 1.1 / (s + 1)} for s in range(0, 2001, 100)]}
    if artifacts:
        folder = sweep_dir / "jobs" / jid
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({**figures, "curve": rec["curve"]}))
        (folder / "model.pt").write_bytes(os.urandom(7 * 1024))
        (folder / "job.json").write_text(json.dumps(rec))
    return rec


def cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU time (user + system) of the server and every process it started (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, utime + stime
    tree, total = {proc.pid}, 0.0
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    return sum(stats[p][1] for p in tree if p in stats)


def measure(url: str, runs: int, threads: int, base: Path, artifacts: bool, server: subprocess.Popen) -> dict:
    from mlflow.tracking import MlflowClient

    from circuitry.orchestrator.recorder import JOB_TAG, Recorder

    name = f"rate-{threads}-{time.monotonic_ns()}"
    sweep_dir = base / name
    sweep_dir.mkdir()
    records = [train_record(i, sweep_dir, artifacts) for i in range(runs)]
    rec = Recorder(sweep_dir, name, url, mlflow_threads=threads, warn=lambda m: print(m, file=sys.stderr))
    rec.start({})
    server0, client0, t0 = cpu_seconds(server), time.process_time(), time.perf_counter()
    for r in records:
        rec.add(r)
    rec.close("FINISHED")
    seconds = time.perf_counter() - t0
    server_cpu, client_cpu = cpu_seconds(server) - server0, time.process_time() - client0
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(name)
    found = set()
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.`circuitry.role` = 'job'", max_results=1000, page_token=token)
        found |= {r.data.tags[JOB_TAG] for r in page if r.info.status == "FINISHED"}
        token = page.token
        if not token:
            break
    return {"threads": threads, "runs": runs, "seconds": seconds, "runs_per_s": runs / seconds,
            "server_cpu_ms_per_run": 1000 * server_cpu / runs, "client_cpu_ms_per_run": 1000 * client_cpu / runs,
            "load_average": os.getloadavg()[0],
            "lost": runs - len(found & {r["job_id"] for r in records}), "error": rec.mlflow_error}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", default="1,8", help="comma-separated logging thread counts (1 = before the pool)")
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument("--server-workers", type=int, default=2, help="the mlflow server's worker processes")
    ap.add_argument("--artifacts", action="store_true", help="log each job's folder too (3 small files)")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for store in args.stores.split(","):
        base = Path(tempfile.mkdtemp(prefix=f"mlflow-rate-{store}-"))
        pg = server = None
        try:
            if store == "sqlite":
                uri = f"sqlite:///{base / 'mlflow.db'}"
            else:
                try:
                    import psycopg2  # noqa: F401 - the server's driver for the postgresql+psycopg2:// URI
                    pg = Postgres(base / "pg")
                except Exception as e:  # noqa: BLE001
                    print(f"{store}: skipped ({type(e).__name__}: {e})")
                    continue
                uri = pg.uri
            server, url = start_mlflow(uri, base, args.server_workers)
            for t in threads:
                row = {"store": store, "artifacts": args.artifacts,
                       **measure(url, args.runs, t, base, args.artifacts, server)}
                rows.append(row)
                print(f"{store:10s} threads {t:3d}: {row['runs']} runs in {row['seconds']:.1f} s = "
                      f"{row['runs_per_s']:.1f} runs/s; server CPU {row['server_cpu_ms_per_run']:.0f} ms/run, "
                      f"client CPU {row['client_cpu_ms_per_run']:.0f} ms/run; load {row['load_average']:.1f}; "
                      f"lost {row['lost']}" + (f", error {row['error']}" if row["error"] else ""), flush=True)
        finally:
            if server is not None:
                stop(server)
            if pg is not None:
                pg.stop()
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
