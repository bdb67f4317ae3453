"""`circuitry report SWEEP`: tables and figures of the BIMT-vs-ordinary comparison."""
from __future__ import annotations

from pathlib import Path

import click


def refresh_table(sweep_dir: Path) -> int:
    """Rewrite SWEEP/jobs.parquet from the signed, finished results of the spec's jobs
    (orchestrator.store): the report's rows are those, never rows planted in the table. Returns
    how many of the spec's job folders were left aside (unsigned or damaged)."""
    from circuitry.orchestrator.backfill import spec_job_ids
    from circuitry.orchestrator.recorder import flat_row, write_parquet
    from circuitry.orchestrator.spec import SpecError
    from circuitry.orchestrator.store import JobStore

    try:
        ids = spec_job_ids(sweep_dir)
    except (OSError, SpecError):  # no readable spec.toml: every signed result of the folder
        ids = None
    records, rejected = JobStore(sweep_dir).scan(ids)
    write_parquet([flat_row(r) for r in records.values()], sweep_dir / "jobs.parquet")
    return len(rejected)


@click.command("report")
@click.argument("sweep", metavar="SWEEP", type=click.Path(file_okay=False))
@click.option("--mlflow/--no-mlflow", default=True, show_default=True,
              help="Also log report.md and the figures to the sweep's parent MLflow run.")
@click.option("--tracking-uri", default=None, help="MLflow store (default: the sweep's own, in the sweep folder).")
def report_cmd(sweep, mlflow, tracking_uri):
    """Write SWEEP/report.md and its PNG figures from the sweep's signed results (holding the
    sweep's lock: not while a `run` or `sync` of SWEEP is under way)."""
    from circuitry.orchestrator.cli_sweep import sweep_errors
    from circuitry.orchestrator.report import write_report
    from circuitry.orchestrator.store import sweep_lock

    sweep_dir = Path(sweep)
    if not (sweep_dir / "jobs.parquet").is_file():
        raise click.BadParameter(f"{sweep_dir / 'jobs.parquet'} does not exist; give a sweep folder "
                                 "that `circuitry run` has written", param_hint="SWEEP")
    with sweep_errors(), sweep_lock(sweep_dir):
        aside = refresh_table(sweep_dir)
        if aside:
            click.echo(f"{aside} job folders left aside: no valid signature of this user's key, or damaged "
                       "(`circuitry run` runs those jobs again)", err=True)
        report, pictures = write_report(sweep_dir)
        click.echo(f"wrote {report} and {len(pictures)} figures")
        if mlflow:
            from circuitry.orchestrator.backfill import log_report

            where = log_report(sweep_dir, [report, *pictures], tracking_uri)
            if where:
                click.echo(f"logged to MLflow: {where}")
