"""The multi-node path with real processes on 127.0.0.1 (issue 8): a Ray head and a second Ray node
(`ray start`, separate processes, a separate --temp-dir), an MLflow server (SQLite store, served
artifacts), `circuitry submit` through the Ray Jobs API, `circuitry status`, the driver's Prometheus
endpoint scraped over HTTP, then a node and the MLflow server stopped mid-sweep.

Everything listens on and talks to 127.0.0.1. Ray's `ray start` turns 127.0.0.1 into the machine's
outward address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the head, and every process it starts,
runs with that); a worker node refuses to start with it, so the second node's `ray start` runs with
one patch (`_LOOPBACK_RAY`): its node address is 127.0.0.1. Every process started here carries the
environment marker CIRCUITRY_TEST_CLUSTER=<token> (Ray and MLflow pass their environment on to the
processes they start), and teardown kills exactly the processes that carry it, also when a test
fails. The rest of the suite (tests/conftest.py's own local Ray) is not touched: no RAY_ADDRESS in
this process, no `ray stop`.

Workers need no volume (issue 16): the second node runs in its own mount namespace (`unshare -m`)
where pytest's whole temporary folder, and so every sweep root of these tests, is bind-mounted
read-only; jobs that run there still finish and are recorded once, because only the driver (on
the head) writes the sweep folder. Where a mount namespace cannot be made (not root, no
unshare), the second node runs unconfined and the read-only check is skipped with the reason.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from processes import kill_marked, marked_pids

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MARK = "CIRCUITRY_TEST_CLUSTER"
NODE_MARK = "CIRCUITRY_TEST_NODE"
_LOOPBACK_RAY = """
import sys
import ray._private.ray_constants as c
import ray._private.services as s
c.ENABLE_RAY_CLUSTER = True  # let this `ray start` join a cluster ...
s.get_node_ip_address = lambda address=None: "127.0.0.1"  # ... as 127.0.0.1
from ray.scripts.scripts import main
sys.argv[0] = "ray"
main()
"""


def readonly_namespace(path: Path) -> list[str] | str:
    """The command prefix that runs a command in its own mount namespace in which `path` is
    read-only (a read-only bind mount onto itself), or why that cannot be done here."""
    if shutil.which("unshare") is None:
        return "no `unshare` command on this machine"
    ro = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0"'
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
    probe = subprocess.run([*prefix, f'{ro} && ! touch "$0/.ro-probe" 2>/dev/null', str(path)],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        why = probe.stderr.strip().splitlines()[-1:] or ["the path stayed writable"]
        return f"`unshare --mount` with a read-only bind mount failed as uid {os.getuid()}: {why[0]}"
    return [*prefix, f'{ro} && exec "$@"', str(path)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as e:  # noqa: BLE001 - not ready yet
            last = e
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r})")


def http_get(url: str, timeout: float = 5, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
        return r.read().decode()




class Cluster:
    def __init__(self, base: Path, readonly: Path):
        self.token = secrets.token_hex(8)
        self.base = base
        # the second node's view of `readonly` (every test's sweep root): read-only, if we can
        self.readonly = readonly
        self.confine = readonly_namespace(readonly)
        # short temp dirs: Ray's unix socket paths must stay under ~107 characters
        self.head_tmp = tempfile.mkdtemp(prefix="crt-h-")
        self.worker_tmp = tempfile.mkdtemp(prefix="crt-w-")
        self.head_cwd = base / "head-cwd"
        self.head_cwd.mkdir()
        self.gcs_port, self.dash_port, self.mlflow_port = free_port(), free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"  # `circuitry` for the job's entrypoint
        # token auth, as a real cluster runs: every node, `circuitry submit`/`status` and the job's
        # driver get the cluster's token from the environment
        self.ray_token = secrets.token_hex(32)
        self.env.update({MARK: self.token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.ray_token,
                         "RAY_USAGE_STATS_ENABLED": "0",
                         "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                         # a dead node is noticed in ~3 s, not ~15 s
                         "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                         "RAY_health_check_initial_delay_ms": "1000"})
        self.mlflow_proc = None
        self.address = f"http://127.0.0.1:{self.dash_port}"
        self.tracking = f"http://127.0.0.1:{self.mlflow_port}"

    # ------------------------------------------------------------ processes
    def _ray_start(self, args: list[str], env: dict, cwd: Path | None = None, loopback_patch=False, prefix=()):
        cmd = [*prefix, *([sys.executable, "-c", _LOOPBACK_RAY] if loopback_patch else [str(BIN / "ray")]),
               "start", *args]
        log = open(self.base / f"ray-start-{len(list(self.base.glob('ray-start-*')))}.log", "w")
        p = subprocess.run(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=120,
                           start_new_session=True)
        assert p.returncode == 0, f"{' '.join(cmd[-len(args) - 1:])} failed: see {log.name}"

    def start_ray(self) -> None:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                  f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                  f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        self._ray_start(["--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                         f"--dashboard-port={self.dash_port}", f"--ray-client-server-port={free_port()}",
                         "--include-dashboard=true", f"--temp-dir={self.head_tmp}", "--resources={\"head\": 1}",
                         *common], {**self.env, NODE_MARK: f"{self.token}-head"}, cwd=self.head_cwd)
        self.start_worker_node()

    def start_worker_node(self) -> None:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                  f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                  f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        env = {**self.env, NODE_MARK: f"{self.token}-worker"}
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
        # `ray start` returns once the node's daemons run; they stay in its mount namespace
        self._ray_start([f"--address=127.0.0.1:{self.gcs_port}", f"--temp-dir={self.worker_tmp}",
                         "--resources={\"second\": 1}", *common], env, loopback_patch=True,
                        prefix=self.confine if isinstance(self.confine, list) else ())
        wait_for("two alive Ray nodes", lambda: len(self.alive_nodes()) == 2, 60)

    def second_node_id(self) -> str:
        return next(n["node_id"] for n in self.alive_nodes() if "second" in n["resources_total"])

    def alive_nodes(self) -> list[dict]:
        data = json.loads(http_get(f"{self.address}/api/v0/nodes?limit=100", token=self.ray_token))
        return [n for n in data["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def stop_worker_node(self) -> None:
        kill_marked(NODE_MARK, f"{self.token}-worker")

    def start_mlflow(self) -> None:
        store = self.base / "mlflow.db"
        uri = f"sqlite:///{store}"
        if not store.exists():  # create the store once, before anything writes to it
            subprocess.run([str(BIN / "mlflow"), "db", "upgrade", uri], env=self.env, check=True, timeout=120,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = open(self.base / "mlflow-server.log", "a")
        self.mlflow_proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", uri,
             "--artifacts-destination", str(self.base / "mlartifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1"],
            env={**self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_for("the MLflow server", lambda: http_get(f"{self.tracking}/health").strip() == "OK", 90)

    def stop_mlflow(self) -> None:
        os.killpg(self.mlflow_proc.pid, signal.SIGKILL)
        self.mlflow_proc.wait(timeout=30)
        wait_for("the MLflow server to be gone", lambda: not _listening(self.mlflow_port), 20)

    def teardown(self) -> None:
        kill_marked(MARK, self.token)
        for d in (self.head_tmp, self.worker_tmp):
            shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------ circuitry
    def circuitry(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "circuitry"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def submit(self, spec_path: Path) -> str:
        p = self.circuitry("submit", str(spec_path), "--address", self.address, "--tracking-uri", self.tracking)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip().splitlines()[-1]

    def status(self, job: str) -> str:
        p = self.circuitry("status", job, "--address", self.address)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip().splitlines()[0].rsplit(" ", 1)[-1]  # "JOB: STATE", then the sweep's counts

    def logs(self, job: str) -> str:
        return self.circuitry("status", job, "--address", self.address, "--logs").stdout

    def follow(self, job: str, timeout: float, during=None) -> str:
        """`circuitry status JOB` until the job ends; `during()` runs between polls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.status(job)
            if state in ("SUCCEEDED", "FAILED", "STOPPED"):
                return state
            if during:
                during()
            time.sleep(0.5)
        raise AssertionError(f"job {job} did not end in {timeout} s; log:\n{self.logs(job)[-3000:]}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"), tmp_path_factory.getbasetemp())
    if isinstance(c.confine, str):
        print(f"\nworkers-need-no-volume check not possible here: {c.confine}; the second node runs unconfined")
    try:
        c.start_ray()
        c.start_mlflow()
        yield c
    finally:
        c.teardown()
        assert not marked_pids(MARK, c.token)


def write_spec(path: Path, name: str, root: Path, metrics_port: int, steps: int, seeds=(0,)) -> Path:
    path.write_text(f"""
[sweep]
name = "{name}"
root = "{root}"
metrics_port = {metrics_port}
metrics_host = "127.0.0.1"
metrics_linger = 2

[train]
task = ["independence", "two_moons"]
regime = ["vanilla", "bimt"]
seed = {json.dumps(list(seeds))}
steps = {steps}
width = 6
log_every = 50

[discover]
method = ["acdc", "exact"]
threshold = 0.01

[resources]
max_retries = 3
""")
    return path


def scrape(port: int) -> dict[str, float]:
    out = {}
    for line in http_get(f"http://127.0.0.1:{port}/metrics", timeout=2).splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def job_ids(spec_path: Path) -> set[str]:
    from circuitry.orchestrator.spec import load_spec

    return {j.id for j in load_spec(spec_path).jobs}


def assert_every_result_once(sweep: Path, ids: set[str]) -> pd.DataFrame:
    folders = sorted(p.name for p in (sweep / "jobs").iterdir())
    assert folders == sorted(ids), "one folder per job id, no .tmp- leftovers"
    df = pd.read_parquet(sweep / "jobs.parquet")
    assert len(df) == len(ids) and df.job_id.is_unique and set(df.job_id) == ids
    assert set(df.status) == {"finished"}
    return df


def mlflow_children(tracking: str, name: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking)
    exp = c.get_experiment_by_name(name)
    assert exp is not None, f"no experiment {name} at {tracking}"
    parents = c.search_runs([exp.experiment_id], "tags.`circuitry.role` = 'sweep'")
    children = c.search_runs([exp.experiment_id], "tags.`circuitry.role` = 'job'", max_results=1000)
    return c, parents, children


def test_submit_runs_on_both_nodes_records_to_mlflow_and_serves_metrics(cluster, tmp_path):
    root = tmp_path / "sweeps"
    mport = free_port()
    spec = write_spec(tmp_path / "s.toml", "cluster-a", root, mport, steps=100)
    ids = job_ids(spec)
    # the cluster runs with token auth: a job submitted without the token is refused ...
    req = urllib.request.Request(f"{cluster.address}/api/jobs/", data=json.dumps({"entrypoint": "true"}).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 401
    # ... and `circuitry status` without it says so in one line, exit 1
    no_token = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    p = subprocess.run([str(BIN / "circuitry"), "status", "--address", cluster.address], env=no_token,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and p.stderr.startswith("error: "), (p.returncode, p.stderr[-2000:])
    samples: list[dict] = []
    stop = threading.Event()

    def scrape_while_running():
        # its own thread, every 0.2 s: each `circuitry status` poll takes seconds, and the
        # sweep's endpoint lives only while the sweep runs
        while not stop.is_set():
            try:
                samples.append(scrape(mport))
            except OSError:
                pass  # the driver has not started its endpoint yet, or has stopped it
            stop.wait(0.2)

    scraper = threading.Thread(target=scrape_while_running, daemon=True)
    scraper.start()
    try:
        job = cluster.submit(spec)
        assert cluster.follow(job, 150) == "SUCCEEDED", cluster.logs(job)[-3000:]
    finally:
        stop.set()
        scraper.join(5)
    log = cluster.logs(job)
    assert f"metrics: http://127.0.0.1:{mport}/metrics" in log
    assert "12 jobs ran, 0 were already finished, 0 failed" in log

    # results: one folder and one row per job, on both nodes
    sweep = root / "cluster-a"
    df = assert_every_result_once(sweep, ids)
    records = [json.loads((sweep / "jobs" / j / "job.json").read_text()) for j in ids]
    node_ids = {r["node_id"] for r in records}
    assert None not in node_ids and len(node_ids) >= 2, node_ids
    assert node_ids <= {n["node_id"] for n in cluster.alive_nodes()}
    # jobs ran on the second node, which (test_second_node_cannot_write_the_sweep_root) sees the
    # sweep root read-only: its results reached the folder through the object store and the driver
    assert cluster.second_node_id() in node_ids
    assert set(df.node_id) == node_ids

    # the endpoint was scraped over HTTP while the sweep ran, and its counters rose
    steps = [sum(v for k, v in s.items() if k.startswith("circuitry_train_steps_total")) for s in samples]
    done = [sum(v for k, v in s.items() if k.startswith("circuitry_job_events_total") and 'event="finished"' in k)
            for s in samples]
    assert len(samples) >= 2, samples
    assert steps == sorted(steps) and steps[-1] > steps[0], steps
    assert done == sorted(done) and done[-1] > done[0], done
    # the endpoint outlived the sweep (sweep.metrics_linger): the last scrape holds the final
    # counts, each job submitted once; and MLflow's "View run" links stayed out of the log
    last = samples[-1]
    assert done[-1] == len(ids) and sum(v for k, v in last.items() if k.startswith("circuitry_jobs{")
                                        and 'state="finished"' in k) == len(ids), last
    assert sum(v for k, v in last.items() if k.startswith("circuitry_job_events_total")
               and 'event="submitted"' in k) == len(ids), last
    assert "View run" not in log and "View experiment" not in log

    # MLflow, over HTTP: the parent run, one child per job (tagged with its id), artifacts served
    c, parents, children = mlflow_children(cluster.tracking, "cluster-a")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["circuitry.job_id"] for r in children) == sorted(ids)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    for r in children:
        names = {a.path for a in c.list_artifacts(r.info.run_id)}
        want = {"model.pt", "job.json"} if r.data.tags["kind"] == "train" else {"circuit.parquet", "job.json"}
        assert want <= names, (r.data.tags["circuitry.job_id"], names)
    assert any((cluster.base / "mlartifacts").rglob("model.pt"))  # stored by the server (--serve-artifacts)


def test_second_node_cannot_write_the_sweep_root(cluster, tmp_path):
    """The second node's processes live in a mount namespace where every sweep root of these
    tests is read-only, while this process (and the head, where the driver runs) can write it."""
    if isinstance(cluster.confine, str):
        pytest.skip(f"workers-need-no-volume check: {cluster.confine}")
    probe = tmp_path / "sweeps" / "probe"
    probe.parent.mkdir()
    probe.write_text("head side")  # writable outside the namespace
    raylets = [pid for pid in marked_pids(NODE_MARK, f"{cluster.token}-worker")
               if b"raylet" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert raylets, "the second node's raylet is not running"
    p = subprocess.run(["nsenter", "--mount", f"--target={raylets[0]}", "sh", "-c", f"echo worker > {probe}"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "Read-only file system" in p.stderr, (p.returncode, p.stderr)
    assert probe.read_text() == "head side"


def test_sweep_survives_a_lost_node_and_an_mlflow_outage(cluster, tmp_path):
    """Mid-sweep: the second Ray node is killed, then the MLflow server. The sweep still finishes
    with every result exactly once; the driver names the tracking URI; `circuitry sync` backfills
    MLflow without duplicate runs."""
    root = tmp_path / "sweeps"
    # two seeds: 8 train jobs for 2 one-CPU nodes, so the sweep is still running for several
    # train jobs' time after the first result (results appear when the driver writes them)
    spec = write_spec(tmp_path / "s.toml", "cluster-b", root, free_port(), steps=1500, seeds=(0, 1))
    ids = job_ids(spec)
    sweep = root / "cluster-b"
    job = cluster.submit(spec)
    finished = lambda: len(list((sweep / "jobs").glob("[0-9a-f]*/job.json"))) if (sweep / "jobs").is_dir() else 0  # noqa: E731

    # once the first result is in (both nodes busy with jobs), stop MLflow, then kill the second node
    wait_for("the first result", lambda: finished() >= 1, 150)
    cluster.stop_mlflow()
    cluster.stop_worker_node()
    at_kill = finished()
    assert at_kill < len(ids) and cluster.status(job) == "RUNNING", "both faults must hit a running sweep"
    wait_for("the head to see the node gone", lambda: len(cluster.alive_nodes()) == 1, 60)
    assert cluster.follow(job, 240) == "SUCCEEDED", cluster.logs(job)[-3000:]
    log = cluster.logs(job)
    assert f"MLflow at {cluster.tracking} failed" in log, log[-3000:]
    assert re.search(rf"MLflow: +{re.escape(cluster.tracking)} FAILED", log), log[-3000:]
    assert_every_result_once(sweep, ids)

    # MLflow back: sync logs the missing runs, once; a second sync logs none
    cluster.start_mlflow()
    p = cluster.circuitry("sync", str(sweep), "--tracking-uri", cluster.tracking)  # sweep.json's is not followed
    assert p.returncode == 0, p.stderr
    logged, present = map(int, re.search(r"(\d+) runs logged, (\d+) were already there", p.stdout).groups())
    assert logged >= 1 and logged + present == len(ids), p.stdout
    p = cluster.circuitry("sync", str(sweep), "--tracking-uri", cluster.tracking)
    assert p.returncode == 0 and f"0 runs logged, {len(ids)} were already there" in p.stdout, p.stdout
    _, parents, children = mlflow_children(cluster.tracking, "cluster-b")
    per_job = pd.Series([r.data.tags["circuitry.job_id"] for r in children]).value_counts()
    assert set(per_job.index) == ids and set(per_job) == {1}
    assert {r.info.status for r in children} == {"FINISHED"} and len(parents) == 1

    cluster.start_worker_node()  # for any later test
