"""Shared test setup: Ray/MLflow environment and one local Ray for the whole session."""
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# job records are signed with this key (orchestrator.signing), never the user's ~/.config/circuitry/key;
# processes the tests start inherit it
import tempfile  # noqa: E402

os.environ["CIRCUITRY_KEY_FILE"] = os.path.join(tempfile.mkdtemp(prefix="circuitry-test-key-"), "key")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """The embedded local Ray (token auth, as `circuitry run` starts it) with 2 CPUs, started once,
    shut down at the end of the session."""
    import ray

    from circuitry.orchestrator.ray_session import start_local_ray

    started = not ray.is_initialized()
    if started:
        start_local_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()
