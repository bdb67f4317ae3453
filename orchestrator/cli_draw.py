"""`circuitry draw`: pictures of a circuit already found. For image tasks (mnist, digits) the
input-reach heatmap: one small image per class showing the pixels its circuit reads, which makes
a circuit of thousands of edges legible where its network drawing is a blot."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("draw")
@click.argument("circuit", metavar="CIRCUIT", type=click.Path(file_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="The model.pt the circuit was found on.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="The PNG to write (default: CIRCUIT/input_reach.png).")
def draw_cmd(circuit, model_path, out):
    """Draw the input-reach heatmap of CIRCUIT (a `circuitry discover --out` folder) for an image
    task: which input pixels reach each class through the circuit's edges."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from circuitry.tasks import TASKS
    from circuitry.workers.circuit_file import load_circuit
    from circuitry.workers.draw import draw_input_reach
    from circuitry.workers.model import CheckpointError, load_checkpoint
    from circuitry.workers.names import edge_count

    try:
        ckpt = load_checkpoint(model_path)
    except CheckpointError as e:
        raise click.BadParameter(str(e), param_hint="--model") from None
    task = TASKS.get(ckpt["task"]) if ckpt["task"] in TASKS else None
    grid = getattr(task, "input_grid", None)
    if grid is None:
        raise click.BadParameter(f"{model_path} is a {ckpt['task']} model; the input-reach heatmap is drawn for "
                                 "image tasks (mnist, digits)", param_hint="--model")
    path = Path(circuit) / "circuit.parquet"
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise click.BadParameter(f"{path}: cannot read it ({type(e).__name__}); give a `circuitry discover --out` "
                                 "folder", param_hint="CIRCUIT") from None
    shape = list(ckpt["shape"])
    if table.num_rows != edge_count(shape) or "in_circuit" not in table.schema.names:
        raise click.BadParameter(f"{path} has {table.num_rows} edges, {model_path} has {edge_count(shape)}; give "
                                 "the model the circuit was found on", param_hint="--model")
    target = Path(out) if out else Path(circuit) / "input_reach.png"
    draw_input_reach(ckpt, load_circuit(path, shape), target, tuple(grid))
    click.echo(f"input reach of {int(table['in_circuit'].to_numpy().sum())} circuit edges -> {target}")
