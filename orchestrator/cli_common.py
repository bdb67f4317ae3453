"""What every `circuitry` command module shares: the bad-input error, the writable-folder check and
the environment the user set before main() changed it. cli.py and the command modules import this;
it imports none of them."""
from __future__ import annotations

import os
from pathlib import Path

import click


class InputError(click.UsageError):
    """Bad input found after parsing (a file's content, a combination of options): one line naming
    the option and the fix, exit code 2."""


def writable_dir(path: str, option: str, no_link: bool = False) -> Path:
    """Create `path` and check it can be written: a probe file made new (O_EXCL, O_NOFOLLOW, a
    unique name) and removed, so a link planted at a probe's name is never written through.
    `no_link`: the folder itself must not be a link (a sweep folder)."""
    import secrets

    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if no_link and out.is_symlink():
            raise InputError(f"{option}: {out} is a link; circuitry follows no link in a sweep folder; give a "
                             "real folder")
        probe = f".circuitry-write-test-{os.getpid()}-{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        os.close(os.open(out / probe, flags, 0o600))
        os.unlink(out / probe)
    except OSError as e:
        raise InputError(f"{option}: cannot write to {out} ({e.strerror}); give a writable folder") from None
    return out


# The environment circuitry defaults for local use when the user has not set it. RAY_AUTH_MODE is
# not among them: the embedded Ray runs with a per-run token (orchestrator/ray_session.py) and a
# cluster keeps its own setting.
ENV_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
# The variables main() saw set by the user before anything in this process changed them (None:
# main() did not run, so whatever is in os.environ came from the user). `circuitry submit` forwards
# RAY_AUTH_MODE to the cluster only when the user set it, so the cluster's own setting applies.
USER_ENV_KEYS = ("RAY_AUTH_MODE", *ENV_DEFAULTS)
USER_SET_ENV: set[str] | None = None


def apply_env_defaults() -> None:
    """Remember which variables the user set, then fill in `ENV_DEFAULTS` (main() calls this once)."""
    global USER_SET_ENV
    USER_SET_ENV = {k for k in USER_ENV_KEYS if k in os.environ}
    for k, v in ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def user_set(name: str) -> bool:
    return name in os.environ if USER_SET_ENV is None else name in USER_SET_ENV
