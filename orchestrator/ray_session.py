"""Connecting the driver to Ray: an existing cluster, or an embedded local Ray that nobody else can use.

An existing cluster (`--address`, RAY_ADDRESS, a Ray Job's driver) keeps its own authentication:
RAY_AUTH_MODE and the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) come from
the environment, as for every Ray client. `local` (Ray's word for "start a cluster here") is no
existing cluster: it gets the embedded Ray below, with its per-run token.

The embedded local Ray listens on more than loopback (Ray's dashboard agent, GCS and raylet bind
every interface), so without authentication anyone who reaches this machine could submit a job to
it and run code here. It therefore starts with token auth and a fresh random token that lives only
in this process's environment (Ray's own processes inherit it; it is never written to the sweep
folder, a file or a log). RAY_AUTH_MODE=disabled, set by the user, turns that off, with a warning.
"""
from __future__ import annotations

import os
import secrets
import sys

# One token per process: Ray's C++ token loader caches the first token a process uses, so a
# process that starts the embedded Ray twice (a test session) keeps its first token.
_LOCAL_TOKEN: str | None = None


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address` (or RAY_ADDRESS), else start an authenticated embedded Ray on 127.0.0.1.
    Returns True when this call started or connected Ray (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(address)
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        start_local_ray(num_cpus)
    return True


def cluster_address(address: str | None = None) -> str | None:
    """The existing cluster to join (`address`, else RAY_ADDRESS), or None for the embedded Ray.
    RAY_ADDRESS=local is Ray's "start one here": the embedded Ray with its per-run token, and the
    variable is dropped so that Ray's own ray.init does not start an unauthenticated one."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        os.environ.pop("RAY_ADDRESS", None)
        return None
    return address


def start_local_ray(num_cpus: int | None = None) -> None:
    """Start the embedded local Ray with this process's token (see the module docstring)."""
    import ray

    secure_local_env()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1")


def secure_local_env() -> None:
    """Set token auth with this process's fresh token, unless the user set RAY_AUTH_MODE=disabled."""
    global _LOCAL_TOKEN
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        print("warning: RAY_AUTH_MODE=disabled: the local Ray accepts jobs without a token from anyone who "
              "can reach this machine; unset it to run with a per-run token", file=sys.stderr, flush=True)
        return
    if _LOCAL_TOKEN is None:
        _LOCAL_TOKEN = secrets.token_hex(32)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = _LOCAL_TOKEN
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)  # RAY_AUTH_TOKEN wins anyway; no stale path to confuse
    # Ray reads RAY_AUTH_MODE into its config when it is imported; re-read it now (what Ray's own
    # ray.init does when it turns token auth on for a local cluster).
    from ray._raylet import Config

    Config.initialize("")
