"""`circuitry report SWEEP`: tables and figures of the BIMT-vs-ordinary comparison."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("sweep", metavar="SWEEP", type=click.Path(file_okay=False))
@click.option("--mlflow/--no-mlflow", default=True, show_default=True,
              help="Also log report.md and the figures to the sweep's parent MLflow run.")
@click.option("--tracking-uri", default=None, help="MLflow store (default: the sweep's own).")
def report_cmd(sweep, mlflow, tracking_uri):
    """Write SWEEP/report.md and its PNG figures from SWEEP/jobs.parquet (holding the sweep's
    lock: not while a `run` or `sync` of SWEEP is under way)."""
    from circuitry.orchestrator.report import write_report
    from circuitry.orchestrator.store import SweepBusy, sweep_lock

    sweep_dir = Path(sweep)
    if not (sweep_dir / "jobs.parquet").is_file():
        raise click.BadParameter(f"{sweep_dir / 'jobs.parquet'} does not exist; give a sweep folder "
                                 "that `circuitry run` has written", param_hint="SWEEP")
    try:
        with sweep_lock(sweep_dir):
            report, pictures = write_report(sweep_dir)
            click.echo(f"wrote {report} and {len(pictures)} figures")
            if mlflow:
                from circuitry.orchestrator.recorder import log_report

                where = log_report(sweep_dir, [report, *pictures], tracking_uri)
                if where:
                    click.echo(f"logged to MLflow: {where}")
    except SweepBusy as e:
        raise click.ClickException(str(e)) from None
