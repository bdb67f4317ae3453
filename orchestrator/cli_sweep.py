"""The sweep commands: schema, validate, run, submit, status, cancel, ui, sync."""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from circuitry.orchestrator import checkers
from circuitry.orchestrator.cli_common import ENV_DEFAULTS, InputError, user_set, writable_dir
from circuitry.orchestrator.spec import SpecError, load_spec, parse_spec, spec_schema

SPEC_ENV = "CIRCUITRY_SPEC_TOML"  # submit: the spec's text, in the Ray Job's runtime env


@contextmanager
def sweep_errors():
    """The sweep folder's refusals as one line, exit 2: busy, a link, a full disk, no key."""
    from circuitry.orchestrator.signing import SigningKeyError
    from circuitry.orchestrator.store import SweepBusy, UnsafeFolder, WriteFailed

    try:
        yield
    except (SweepBusy, UnsafeFolder, WriteFailed, SigningKeyError) as e:
        raise InputError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _spec(path: str, root: str | None = None):
    """SPEC is a .toml file, or "-" for the spec's text on stdin (how `circuitry submit` hands it
    to the driver on the head)."""
    try:
        if path == "-":
            return parse_spec(sys.stdin.read(), "stdin", root)
        return load_spec(path, root)
    except SpecError as e:
        raise InputError(str(e)) from None


def _sweep_dir(arg: str) -> tuple[Path, dict]:
    """SWEEP may be the sweep folder or the spec that made it."""
    p = Path(arg)
    if p.is_file() and p.suffix == ".toml":
        p = _spec(arg).sweep_dir
    meta_path = p / "sweep.json"
    if not meta_path.is_file():
        raise InputError(f"SWEEP: {arg} is not a sweep folder (no sweep.json); give the folder "
                              "`circuitry run` printed, or the spec")
    if p.is_symlink():
        raise InputError(f"SWEEP: {arg} is a link; circuitry follows no link to a sweep folder; give the folder")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"SWEEP: {meta_path} is unreadable ({type(e).__name__}); run its spec again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise InputError(f"SWEEP: {meta_path} names no sweep; run its spec again")
    return p.resolve(), meta


def _job_client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - connection problems of any kind
        raise click.ClickException(f"--address: cannot reach the Ray dashboard at {address} ({e}); "
                                   "give http://HEAD:8265") from None


@click.command("validate")
@click.argument("spec_path", metavar="SPEC")
def validate_cmd(spec_path):
    """Check SPEC and print how many jobs it expands to."""
    spec = _spec(spec_path)
    n_train, n_disc = len(spec.train_jobs()), len(spec.discover_jobs())
    chunks = spec.n_chunk_tasks()
    extra = f" (exact fans out into {chunks} chunk tasks)" if chunks else ""
    click.echo(f"{spec.name}: {n_train} train + {n_disc} discover = {len(spec.jobs)} jobs{extra} -> {spec.sweep_dir}")


@click.command("schema")
def schema_cmd():
    """Print the JSON Schema of a spec file, for editors: save it and name it in the spec's first
    line, `#:schema ./spec.schema.json` (taplo, VS Code's Even Better TOML)."""
    click.echo(json.dumps(spec_schema(), indent=2))


@click.command("run")
@click.argument("spec_path", metavar="SPEC")
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray).")
@click.option("--root", default=None, type=click.Path(file_okay=False),
              help="Folder for the sweep folder (overrides sweep.root; relative = to the working directory). "
                   "Only the driver (this command) writes it; workers return their results through Ray's object "
                   "store, so on a cluster it need exist on the driver's node only.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: sweep.tracking_uri, else SQLite in the sweep folder).")
@click.option("--metrics-port", type=click.IntRange(-1, 65535), default=None,
              help="Prometheus port (0 = any free port, -1 = none; default: sweep.metrics_port).")
@click.option("--metrics-host", default=None, envvar="CIRCUITRY_METRICS_HOST", show_envvar=True,
              help="Address the Prometheus endpoint binds (default: sweep.metrics_host, 127.0.0.1); "
                   "0.0.0.0 lets a cluster's Prometheus scrape the driver's node.")
@click.option("--metrics-linger", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Keep the Prometheus endpoint up this long after the last job, so the final figures are "
                   "scraped (default: sweep.metrics_linger, 10 s = 2 scrape intervals of deploy/prometheus).")
@click.option("--pushgateway", default=None, envvar="CIRCUITRY_PUSHGATEWAY", show_envvar=True, metavar="URL",
              help="Also push the final figures to this Prometheus Pushgateway, http://HOST:9091 "
                   "(default: sweep.pushgateway, none).")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None, help="CPUs of the embedded local Ray.")
@click.option("--no-mlflow", is_flag=True, help="Record jobs.parquet only (backfill later with `circuitry sync`).")
@click.option("--quiet", is_flag=True, help="No progress output.")
def run_cmd(spec_path, address, root, tracking_uri, metrics_port, metrics_host, metrics_linger, pushgateway, num_cpus,
            no_mlflow, quiet):
    """Run SPEC's sweep on Ray; only jobs without a finished result run."""
    from circuitry.orchestrator.ray_session import ensure_ray
    from circuitry.orchestrator.scheduler import Scheduler
    from circuitry.orchestrator.store import sweep_lock

    spec = _spec(spec_path, root)

    try:
        if tracking_uri is not None:
            checkers.tracking_uri("--tracking-uri", tracking_uri)
        if metrics_host is not None:
            checkers.host("--metrics-host", metrics_host)
        if pushgateway is not None:
            checkers.pushgateway("--pushgateway", pushgateway)
    except SpecError as e:
        raise InputError(str(e)) from None

    writable_dir(str(spec.sweep_dir), "sweep.root", no_link=True)
    from circuitry.orchestrator.signing import signing_key

    with sweep_errors():
        signing_key()  # created now, or its problem in one line before anything runs

    # the lock, the folder's checks and its first writes come before Ray starts: a second driver,
    # a linked folder or a full disk stop in one line without starting a local Ray
    with sigterm_as_ctrl_c(), sweep_errors(), sweep_lock(spec.sweep_dir):
        sched = Scheduler(spec, tracking_uri=tracking_uri, metrics_port=metrics_port, metrics_host=metrics_host,
                          metrics_linger=metrics_linger, pushgateway=pushgateway, progress=not quiet,
                          record_mlflow=not no_mlflow, echo=lambda m: click.echo(m, err=False))
        sched.prepare_folder()
        started = ensure_ray(address, num_cpus)
        try:
            out = sched.run(locked=True)
        finally:
            if started:
                import ray

                ray.shutdown()
    from circuitry.orchestrator.recorder import sync_command

    d = out.sweep_dir
    click.echo(f"{out.finished} jobs ran, {out.cached} were already finished, {out.failed} failed, "
               f"{out.skipped} skipped, {out.retries} retries, in {out.seconds:.1f} s")
    click.echo(f"results:      {d}/jobs/<job id>/ and {d / 'jobs.parquet'}")
    if out.mlflow_error:
        click.echo(f"MLflow:       {out.tracking_uri} FAILED ({out.mlflow_error}); run `{sync_command(d, out.tracking_uri)}`")
    elif not no_mlflow:
        click.echo(f"MLflow store: {out.tracking_uri}")
        if out.tracking_uri.startswith("sqlite:"):
            click.echo(f"open its UI:  circuitry ui {shlex.quote(str(d))}")
    if out.write_error:
        raise InputError(out.write_error)
    if out.interrupted:
        click.echo("interrupted: finished results are kept; run the same command again to resume", err=True)
        sys.exit(130)
    if out.failed:
        for label, err in out.failures[:10]:
            click.echo(f"failed: {label}: {err}", err=True)
        raise click.ClickException(f"{out.failed} jobs failed; run the same command again to retry them")


@contextmanager
def sigterm_as_ctrl_c():
    """`ray job stop` or kill stops the run like Ctrl-C while it lasts; the process's own SIGTERM
    handler comes back after (the command may run inside another program: a test, a notebook)."""
    def on_term(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = None if sys.platform == "win32" else signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@click.command("submit")
@click.argument("spec_path", metavar="SPEC")
@click.option("--address", required=True, help="The cluster's dashboard, http://HEAD:8265.")
@click.option("--root", default=None,
              help="Folder for the sweep folder on the head (default: sweep.root). Passed through unchanged: a "
                   "relative path is resolved on the head, against the working directory of its `ray start`, "
                   "not here. Only the driver writes it (workers mount nothing): a volume on the head is enough.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI as seen from the head node.")
@click.option("--metrics-host", default=None,
              help="Address the driver's Prometheus endpoint binds on the head (default: the head's "
                   "CIRCUITRY_METRICS_HOST, else sweep.metrics_host).")
def submit_cmd(spec_path, address, root, tracking_uri, metrics_host):
    """Submit SPEC's sweep to a Ray cluster as a Ray Job; prints the job id.

    The spec travels in the job's runtime env; the driver (`circuitry run`) runs on the head in
    the working directory of the head's `ray start`. RAY_AUTH_MODE is forwarded only when you
    set it yourself: otherwise the cluster's own auth setting applies."""

    spec = _spec(spec_path, root)
    if metrics_host is not None:
        try:
            checkers.host("--metrics-host", metrics_host)
        except SpecError as e:
            raise InputError(str(e)) from None
    entry = f"printenv {SPEC_ENV} | circuitry run -"
    if root is not None:
        entry += f" --root {shlex.quote(root)}"
    if tracking_uri:
        entry += f" --tracking-uri {shlex.quote(tracking_uri)}"
    if metrics_host:
        entry += f" --metrics-host {shlex.quote(metrics_host)}"
    client = _job_client(address)
    env = {SPEC_ENV: spec.source}
    for k, default in ENV_DEFAULTS.items():
        env[k] = os.environ.get(k, default)
    if user_set("RAY_AUTH_MODE"):
        env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"]
    try:
        job_id = client.submit_job(entrypoint=entry, runtime_env={"env_vars": env},
                                   metadata={"circuitry_sweep": spec.name})
    except Exception as e:  # noqa: BLE001
        raise click.ClickException(f"--address: submitting to {address} failed ({e})") from None
    click.echo(job_id)
    click.echo(f"follow it: circuitry status {job_id} --address {address}", err=True)


@click.command("status")
@click.argument("job_id", required=False)
@click.option("--address", required=True, help="The cluster's dashboard, http://HEAD:8265.")
@click.option("--logs", is_flag=True, help="Print the job's log too.")
def status_cmd(job_id, address, logs):
    """Status of a submitted sweep (or of all jobs on the cluster)."""
    client = _job_client(address)
    try:
        if job_id is None:
            for j in client.list_jobs():
                click.echo(f"{j.submission_id}  {j.status}  {j.entrypoint}")
            return
        text = client.get_job_logs(job_id)
        click.echo(f"{job_id}: {client.get_job_status(job_id)}")  # scripts read the state off this line's end
        if counts := sweep_counts(text):
            click.echo(f"sweep: {counts}")
        if logs:
            click.echo(text)
    except RuntimeError as e:
        raise click.ClickException(f"JOB_ID: {job_id}: {e}") from None


def sweep_counts(log: str) -> str:
    """The driver's last progress figures in its log (orchestrator.metrics.ProgressBar's lines
    `[done/total] finished ...` / `FAILED ...`, and the sweep's first line): "40/72 jobs done
    (12 cached, 1 failed)", or "" before the driver has printed any."""
    import re

    done = re.findall(r"^\[(\d+)/(\d+)\] ", log, re.M)
    start = re.search(r"^sweep \S+: (\d+) jobs, (\d+) already finished", log, re.M)
    if not done and not start:
        return ""
    n, total = done[-1] if done else (start.group(2), start.group(1))
    failed = len(re.findall(r"^\[\d+/\d+\] FAILED ", log, re.M))
    cached = f"{start.group(2)} cached, " if start else ""
    return f"{n}/{total} jobs done ({cached}{failed} failed)"


@click.command("cancel")
@click.argument("job_id")
@click.option("--address", required=True, help="The cluster's dashboard, http://HEAD:8265.")
def cancel_cmd(job_id, address):
    """Stop a submitted sweep (it stops like Ctrl-C and can be resumed)."""
    client = _job_client(address)
    try:
        stopped = client.stop_job(job_id)
    except RuntimeError as e:
        raise click.ClickException(f"JOB_ID: {job_id}: {e}") from None
    click.echo(f"{job_id}: {'stopping' if stopped else 'already finished'}")


@click.command("ui")
@click.argument("sweep", metavar="SWEEP")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
def ui_cmd(sweep, port):
    """Open the MLflow UI on SWEEP's tracking store, on 127.0.0.1."""
    from circuitry.orchestrator.backfill import other_uri_note
    from circuitry.orchestrator.recorder import embedded_uri

    d, meta = _sweep_dir(sweep)
    uri = embedded_uri(d)
    note = other_uri_note(meta, uri)
    if note:  # a server named in sweep.json: its own UI shows it; sweep.json opens nothing here
        click.echo(note.replace("give --tracking-uri to log there", "open that server's UI"))
        return
    args = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--default-artifact-root", (d / "mlartifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port)]
    from circuitry.orchestrator.recorder import ui_url

    click.echo(f"MLflow UI for {d}: {ui_url(f'http://127.0.0.1:{port}', _experiment_id(uri, meta['name']))}  "
               "(Ctrl-C stops it)")
    os.execv(sys.executable, args)


def _experiment_id(sqlite_uri: str, name: str) -> str | None:
    """The sweep's experiment id in its SQLite store, read without loading MLflow (None if absent)."""
    import sqlite3

    path = sqlite_uri.removeprefix("sqlite:///")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (name,)).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


@click.command("sync")
@click.argument("sweep", metavar="SWEEP")
@click.option("--tracking-uri", default=None, help="Log to this store instead of the sweep's own.")
def sync_cmd(sweep, tracking_uri):
    """Backfill MLflow from SWEEP's finished results (no duplicate runs).

    Only the jobs of SWEEP/spec.toml are logged (nothing else in the folder is read), while
    holding the sweep's lock (it waits for no `run`: a running sweep records MLflow itself)."""
    from circuitry.orchestrator.backfill import other_uri_note, sync
    from circuitry.orchestrator.recorder import embedded_uri

    d, meta = _sweep_dir(sweep)
    if not (d / "spec.toml").is_file():
        raise InputError(f"SWEEP: {d} has no spec.toml, so which results are its jobs is unknown; "
                              "run its spec once with `circuitry run` (finished jobs do not run again)")
    uri = tracking_uri or embedded_uri(d)
    note = other_uri_note(meta, uri)
    if note:
        click.echo(note, err=True)
    try:
        with sweep_errors():
            logged, present, aside = sync(d, meta["name"], uri)
    except click.UsageError:
        raise
    except SpecError as e:
        raise InputError(f"SWEEP: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise click.ClickException(f"MLflow at {uri} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    click.echo(f"{logged} runs logged, {present} were already there -> {uri}")
    if aside:
        click.echo(f"{aside} job folders left aside: no valid signature of this user's key, or damaged "
                   "(`circuitry run` runs those jobs again)")


COMMANDS = {"schema": schema_cmd, "validate": validate_cmd, "run": run_cmd, "submit": submit_cmd, "status": status_cmd,
            "cancel": cancel_cmd, "ui": ui_cmd, "sync": sync_cmd}


def register(cli: click.Group) -> None:
    for name, cmd in COMMANDS.items():
        cli.add_command(cmd, name)
