"""The `circuitry` command line. Every bad input ends in one line on stderr that names the option
and the fix, with exit code 2; nothing already written is touched."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from circuitry.orchestrator.cli_common import InputError, apply_env_defaults
from circuitry.orchestrator.console import quiet_option, threads_option
from circuitry.tasks import TASKS
from circuitry.workers.names import DEFAULT_CHECKPOINT_EVERY, REGIMES


@click.group()
@click.version_option(package_name="circuitry")
def cli():
    """circuitry: train networks under BIMT and ordinary regimes, find their circuits, compare."""


@cli.command()
@click.option("--task", required=True, type=click.Choice(list(TASKS)), help="The learning problem.")
@click.option("--regime", required=True, type=click.Choice(REGIMES),
              help="The training regime (prune: needs --from-vanilla and --match).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps (task default).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--lam", type=click.FloatRange(min=0), default=None, help="Penalty strength (task default).")
@click.option("--width", type=click.IntRange(min=1), default=None, help="Hidden width (task default).")
@click.option("--swap-every", type=click.IntRange(min=1), default=None, help="Steps between swaps.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder of the MNIST IDX files (else $CIRCUITRY_MNIST_DIR).")
@click.option("--from-vanilla", "from_vanilla", type=click.Path(dir_okay=False), default=None,
              help="prune: the vanilla model.pt to prune.")
@click.option("--match", "match", type=click.Path(dir_okay=False), default=None,
              help="prune: the model.pt (normally bimt, same task, seed, steps, lam) whose weight count to match.")
@click.option("--finetune-steps", type=click.IntRange(min=1), default=None,
              help="prune: fine-tuning steps (default: a tenth of the vanilla model's steps).")
@click.option("--match-fraction", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=None,
              help="prune: count the matched model's weights with |w| > this x max|w| (default 1e-2).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for model.pt etc.")
@click.option("--force", is_flag=True, help="Replace the run already in --out (else a folder holding one is refused).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=DEFAULT_CHECKPOINT_EVERY, show_default=True,
              help="Steps between checkpoints in OUT/.checkpoint.pt; the same command run again resumes from it (0: none).")
@threads_option
@quiet_option
def train(task, regime, steps, seed, lam, width, swap_every, device, data_dir, from_vanilla, match, finetune_steps,
          match_fraction, out, force, checkpoint_every, threads, quiet):
    """Train one model; write OUT/model.pt, OUT/metrics.json and OUT/network.png.

    --regime prune trains nothing from scratch: it prunes the --from-vanilla model to the weight
    count of the --match model and fine-tunes it (the models' own task, seed and settings)."""
    from circuitry.orchestrator.cli_checkpoint import drop_checkpoint, train_resumable
    from circuitry.orchestrator.console import TrainingBar, callback, show_progress, use_threads
    from circuitry.orchestrator.outdir import check_out, staged
    from circuitry.tasks.base import TaskDataError
    from circuitry.workers.device import DeviceError
    from circuitry.workers.outputs import write_training
    from circuitry.workers.train import TrainConfig

    if data_dir:
        os.environ["CIRCUITRY_MNIST_DIR"] = data_dir
    use_threads(threads)
    prune_options = {"--from-vanilla": from_vanilla, "--match": match, "--finetune-steps": finetune_steps,
                     "--match-fraction": match_fraction}
    if regime != "prune" and any(v is not None for v in prune_options.values()):
        given = next(k for k, v in prune_options.items() if v is not None)
        raise InputError(f"{given}: only --regime prune takes it; drop it or use --regime prune")
    t = TASKS[task]
    if t.compiled is not None and regime != "vanilla":
        raise InputError(f"--regime: {task}'s weights are compiled by tracr, not trained; use --regime vanilla")
    if t.transformer is not None and width is not None:
        raise InputError(f"--width: {task} trains a transformer (its shape is the task's); drop --width")
    out_dir = check_out(out, force)
    try:
        if regime == "prune":
            result = _prune(task, from_vanilla, match, finetune_steps, match_fraction, device, quiet)
        else:
            steps = steps or TASKS[task].recipe.steps
            config = TrainConfig(task=task, regime=regime, steps=steps, seed=seed, lam=lam, width=width,
                                 swap_every=swap_every, device=device)
            with TrainingBar(steps, f"{task}/{regime}", show_progress(quiet)) as bar:
                result = train_resumable(config, out_dir, checkpoint_every, progress=callback(bar))
    except TaskDataError as e:
        raise InputError(f"--data-dir: {e}") from None
    except DeviceError as e:
        raise InputError(f"--device: {e}") from None
    if task == "mnist":  # where `discover` finds the examples again (its --data-dir overrides it)
        result.checkpoint["data_dir"] = str(Path(os.environ["CIRCUITRY_MNIST_DIR"]).resolve())
    with staged(out_dir) as tmp:
        write_training(result, tmp)
    drop_checkpoint(out_dir)
    m = result.metrics
    pruned = f", {m['weights_nonzero']} weights (test loss {m['pruned_test_loss']:.3g} before fine-tuning)" \
        if regime == "prune" else ""
    # a classifier's test accuracy, and a task's own accuracy figure (induction_accuracy, ...)
    accuracy = f", test accuracy {m['test_accuracy']:.3g}" if "test_accuracy" in m else ""
    accuracy += next((f", {k} {m[k]:.3f}" for k in m if k.endswith("_accuracy")
                      and k not in ("train_accuracy", "test_accuracy")), "")
    # a tracr task's compiled weights are not trained: no steps/s
    speed = f", {m['steps_per_second']:.0f} steps/s" if "steps_per_second" in m else ""
    speed += f", resumed from step {result.resumed_from_step}" if result.resumed_from_step else ""
    click.echo(f"{task}/{regime} seed {result.checkpoint['seed']}: test loss {m['test_loss']:.3g}{accuracy}{pruned}, "
               f"connection cost {m['connection_cost']:.3g}{speed} -> {out_dir / 'model.pt'}")


def _prune(task, from_vanilla, match, finetune_steps, match_fraction, device, quiet):
    """`train --regime prune`: the two checkpoints checked, then workers.prune."""
    from circuitry.orchestrator.console import TrainingBar, callback, show_progress
    from circuitry.workers.model import CheckpointError, load_checkpoint
    from circuitry.workers.names import DEFAULT_MATCH_FRACTION
    from circuitry.workers.prune import PruneConfig, default_finetune_steps, model_shape, prune

    ckpts = {}
    for option, path in (("--from-vanilla", from_vanilla), ("--match", match)):
        if path is None:
            raise InputError(f"{option}: missing; --regime prune needs --from-vanilla VANILLA/model.pt and "
                             "--match BIMT/model.pt")
        try:
            ckpts[option] = load_checkpoint(path)
        except CheckpointError as e:
            raise InputError(f"{option}: {e}") from None
        if ckpts[option]["task"] != task:
            raise InputError(f"{option}: {path} is a {ckpts[option]['task']} model, not {task}; give --task "
                             f"{ckpts[option]['task']} or a {task} model")
    vanilla = ckpts["--from-vanilla"]
    if vanilla.get("regime") != "vanilla":
        raise InputError(f"--from-vanilla: {from_vanilla} is a {vanilla.get('regime')} model; give a vanilla one")
    if model_shape(vanilla) != model_shape(ckpts["--match"]):
        raise InputError(f"--match: its shape {model_shape(ckpts['--match'])} is not the vanilla model's "
                         f"{model_shape(vanilla)}; give a model of the same shape")
    steps = finetune_steps or default_finetune_steps(vanilla["config"]["steps"])
    config = PruneConfig(steps, match_fraction or DEFAULT_MATCH_FRACTION, device=device)
    with TrainingBar(steps, f"{task}/prune", show_progress(quiet)) as bar:
        return prune(vanilla, ckpts["--match"], config, progress=callback(bar))


def _register_commands() -> None:
    """Commands that live in their own modules (one idea per module)."""
    from circuitry.orchestrator.cli_discover import discover_cmd
    from circuitry.orchestrator.cli_draw import draw_cmd
    from circuitry.orchestrator.cli_report import report_cmd
    from circuitry.orchestrator.cli_sweep import register

    register(cli)
    cli.add_command(discover_cmd, "discover")
    cli.add_command(report_cmd, "report")
    cli.add_command(draw_cmd, "draw")


def main(argv: list[str] | None = None) -> None:
    apply_env_defaults()
    _register_commands()
    try:
        cli.main(args=argv, prog_name="circuitry", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # one line, the option and the fix, exit 2
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
