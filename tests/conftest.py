"""Shared test setup: Ray/MLflow environment and a local Ray for each module that asks for one."""
import json
import os
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# every Ray the suite starts (here and in the commands it runs) holds a few MB of objects: a store
# of 2% of memory, not Ray's 30%, keeps them clear of a small /dev/shm or a nearly full disk
os.environ.setdefault("RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION", "0.02")
# job records are signed with this key (orchestrator.signing), never the user's ~/.config/circuitry/key;
# processes the tests start inherit it
import tempfile  # noqa: E402

os.environ["CIRCUITRY_KEY_FILE"] = os.path.join(tempfile.mkdtemp(prefix="circuitry-test-key-"), "key")

import pytest  # noqa: E402

# The test being run and the Ray up at the time, for crash_report.py when the suite's process ends
# without pytest's summary: a Ray driver whose raylet dies exits at once (Ray's QuickExit, status
# 1), and pytest's output capture swallows why.
PROGRESS = os.path.join(os.path.dirname(__file__), "..", ".pytest-progress.jsonl")


@pytest.fixture(scope="module")
def ray_local():
    """The embedded local Ray (token auth, as `circuitry run` starts it) with 2 CPUs, up only while
    the module that asks for it runs: the rest of the suite does not depend on a raylet staying alive."""
    import ray

    from circuitry.orchestrator.ray_session import start_local_ray

    started = not ray.is_initialized()
    if started:
        start_local_ray(num_cpus=2)
        node = ray._private.worker.global_worker.node
        _note({"pid": os.getpid(), "logs": node.get_logs_dir_path(), "at": time.time()})
    yield ray
    if started:
        ray.shutdown()
        _note({"pid": os.getpid(), "ray_stopped": True})


def _note(row: dict) -> None:
    with open(PROGRESS, "a") as f:
        f.write(json.dumps(row) + "\n")


def pytest_sessionstart(session):
    if os.path.exists(PROGRESS):
        os.remove(PROGRESS)


def pytest_runtest_logstart(nodeid, location):
    _note({"test": nodeid})


def pytest_sessionfinish(session, exitstatus):
    _note({"pid": os.getpid(), "finished": True})
