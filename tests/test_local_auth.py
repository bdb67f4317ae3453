"""The embedded local Ray that `circuitry run` starts accepts nothing without the run's token.

An attacker who can reach the machine tries what worked before token auth: Ray's job-agent HTTP
API (POST /api/job_agent/jobs/ with a shell entrypoint) and the Jobs API on every port the run
opened, and a Ray client joining the run's GCS without the token (or with a wrong one) to run a
task. Each would create a file; none may. The token itself must not reach the sweep folder.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from processes import kill_marked, marked_pids

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MARK = "CIRCUITRY_TEST_AUTH"


AGENT_PORT = 52365  # Ray's dashboard agent (job-agent HTTP API) on a local start


def listening_ports(pids: set[int] | None) -> dict[int, str]:
    """TCP ports in LISTEN state owned by `pids` (None: by anyone), port -> process name, from `ss -ltnpH`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    ports = {}
    for line in out.splitlines():
        port = int(line.split()[3].rsplit(":", 1)[1])
        name = line.split('(("', 1)[1].split('"', 1)[0] if '(("' in line else "?"
        if pids is None or any(f"pid={pid}," in line for pid in pids):
            ports[port] = name
    return ports


def run_pids(value: str) -> set[int]:
    """The run's processes: those carrying the marker and their descendants (Ray's raylet starts
    its dashboard and runtime-env agents without the environment it was given)."""
    pids = set(marked_pids(MARK, value))
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in pids:
                pids.add(child)
                todo.append(child)
    return pids


def kill_pids(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone already
            pass


def post_job(port: int, marker: Path, timeout: float = 3) -> str:
    """What an unauthenticated job submission to `port` answered (HTTP status or the error type)."""
    answers = []
    for path in ("/api/job_agent/jobs/", "/api/jobs/"):
        body = json.dumps({"entrypoint": f"touch {marker}"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                answers.append(f"{path} {r.status}")
        except urllib.error.HTTPError as e:
            answers.append(f"{path} {e.code}")
        except Exception as e:  # noqa: BLE001 - not HTTP (gRPC, object manager, ...)
            answers.append(f"{path} {type(e).__name__}")
    return ", ".join(answers)


def agent_answer(port: int, marker: Path, patience: float = 120) -> str:
    """The job-agent's answer on `port`, asked until it gives an HTTP one: on a loaded machine an
    agent can take longer than a short timeout to answer (it is a Python process among many)."""
    deadline = time.monotonic() + patience
    while True:
        answer = post_job(port, marker, timeout=30)
        if "/api/job_agent/jobs/ 4" in answer or "/api/job_agent/jobs/ 2" in answer or time.monotonic() > deadline:
            return answer
        time.sleep(1)


JOIN = """
import os, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
@ray.remote
def plant(path):
    open(path, "w").write("pwned")
ray.get(plant.remote(sys.argv[2]), timeout=20)
"""


def join_without_token(gcs: str, marker: Path, env: dict, auths: list[dict]) -> list[tuple[int | None, str]]:
    """Ray clients joining the run's cluster, one per `auths` entry, side by side: (exit code or
    None when it hung and was killed, stderr) each."""
    procs = [subprocess.Popen([sys.executable, "-c", JOIN, gcs, str(marker)], env={**env, **auth},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for auth in auths]
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=90)
            out.append((p.returncode, err))
        except subprocess.TimeoutExpired:
            p.kill()
            out.append((None, p.communicate()[1]))
    return out


def test_local_run_refuses_unauthenticated_jobs(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(f"""
[sweep]
name = "auth"
root = "{tmp_path / 'sweeps'}"
metrics_port = 0
[train]
task = "independence"
regime = "vanilla"
seed = [0, 1]
steps = 10
[testing]
hold = ["train"]
""")  # the jobs wait (test-only `hold`, never released): the run and its Ray stay up until SIGTERM
    value = secrets.token_hex(6)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    env[MARK] = value
    run = subprocess.Popen([str(BIN / "circuitry"), "run", str(spec), "--num-cpus", "1"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    marker = tmp_path / "pwned"
    try:
        # Ray's dashboard agent always asks for port 52365 on a local start. When another Ray holds
        # it (in this suite: the session's own embedded Ray, started by the same start_local_ray),
        # the run's agent retries, then serves no HTTP at all: nothing to attack there. Then the
        # holder's agent is probed, and the run's other ports once its GCS has been up a while.
        agent_port_taken = AGENT_PORT in listening_ports(None)
        deadline = time.monotonic() + 300
        gcs_since = None
        ports: dict[int, str] = {}
        answers: dict[int, str] = {}
        while time.monotonic() < deadline and run.poll() is None:
            ports = listening_ports(run_pids(value))
            agents = {p: n for p, n in ports.items() if n.startswith("ray::Dashboard")}
            answers = {p: f"{n}: {post_job(p, marker)}" for p, n in agents.items()}
            assert not any(" 200" in a for a in answers.values()), answers
            refused = any("/api/job_agent/jobs/ 401" in a for a in answers.values())
            if "gcs_server" in ports.values() and gcs_since is None:
                gcs_since = time.monotonic()
            if refused or (agent_port_taken and gcs_since and time.monotonic() - gcs_since > 10):
                break
            time.sleep(1)
        assert run.poll() is None, f"the run ended early: {run.stdout.read()}"
        if agent_port_taken:
            held = agent_answer(AGENT_PORT, marker)
            assert "/api/job_agent/jobs/ 401" in held, f"the agent holding port {AGENT_PORT}: {held}"
        else:
            assert any("/api/job_agent/jobs/ 401" in a for a in answers.values()), \
                f"the run's dashboard agent never answered the job-agent request with 401: {answers} {ports}"

        # every port the run opened, HTTP or not, refuses an unauthenticated job
        ports = listening_ports(run_pids(value))
        answers = {port: f"{name}: {post_job(port, marker)}" for port, name in ports.items()}
        assert not any(" 200" in a for a in answers.values()), answers

        gcs = f"127.0.0.1:{next(p for p, n in ports.items() if n == 'gcs_server')}"
        auths = [{"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}]
        for auth, (code, err) in zip(auths, join_without_token(gcs, marker, env, auths)):
            assert code != 0, f"joined with {auth}"
            assert code is None or "InvalidAuthToken" in err or "Authentication" in err, err[-2000:]

        time.sleep(3)  # a job that got through would have run by now
        assert not marker.exists(), f"an unauthenticated request ran code: {answers}"

        token = next((e.split(b"=", 1)[1].decode() for pid in marked_pids(MARK, value)
                      for e in _environ(pid) if e.startswith(b"RAY_AUTH_TOKEN=")), None)
        assert token and len(token) >= 32, "the run's Ray does not carry a token"
    finally:
        started = run_pids(value)  # before the stop: a child whose parent dies is nobody's
        run.send_signal(signal.SIGTERM)  # stops like Ctrl-C
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
        kill_marked(MARK, value, timeout=30)
        kill_pids(started)
    leaked = [p for p in (tmp_path / "sweeps").rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert not leaked, f"the token was written to {leaked}"


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


CHECK_ENV = """
import json, os
from circuitry.orchestrator import ray_session
ray_session.secure_local_env()
first = dict(os.environ)
ray_session._LOCAL_TOKEN = None  # as in a new process
ray_session.secure_local_env()
print(json.dumps({"mode": first.get("RAY_AUTH_MODE"), "token": first.get("RAY_AUTH_TOKEN"),
                  "path": first.get("RAY_AUTH_TOKEN_PATH"), "second": os.environ.get("RAY_AUTH_TOKEN")}))
"""


def check_env(**env) -> tuple[dict, list[str]]:
    """secure_local_env() in a fresh process (it re-reads Ray's config, which must not touch this
    test session's own Ray)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    p = subprocess.run([sys.executable, "-c", CHECK_ENV], env={**base, **env}, capture_output=True, text=True,
                       timeout=120, check=True)
    return json.loads(p.stdout), p.stderr.strip().splitlines()


def test_disabled_auth_only_when_the_user_says_so():
    """Token auth with a fresh 256-bit token per process by default (also over a user's token path);
    the user's RAY_AUTH_MODE=disabled is kept, with a one-line warning."""
    got, err = check_env(RAY_AUTH_TOKEN_PATH="/nonexistent/token")
    assert got["mode"] == "token" and got["path"] is None and err == []
    assert len(got["token"]) == 64 and int(got["token"], 16) > 0
    assert got["second"] != got["token"]

    got, err = check_env(RAY_AUTH_MODE="disabled")
    assert got["mode"] == "disabled" and got["token"] is None
    assert len(err) == 2 and all(e.startswith("warning: RAY_AUTH_MODE=disabled: the local Ray accepts") for e in err)
