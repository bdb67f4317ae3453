"""How a standalone command shares the machine and shows its progress.

Threads: a sweep gives each task one CPU and one torch thread (orchestrator.remote); a standalone
`train` or `discover` does the same by default, because torch's default (one thread per core)
makes the small networks here several times slower, not faster, as the threads wait on each other
and on every other process. `--threads N` gives a wide network more.

Progress: tqdm bars on stderr, only when stderr is a terminal and `--quiet` is not given, so a
log file or a pipe gets the one result line and nothing else. Imports nothing heavy at module
level: the CLI imports this module for `--help`."""
from __future__ import annotations

import sys
from typing import Callable

import click


def threads_option(f):
    return click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                        help="torch threads for this command (the small nets here run fastest on one, as in sweeps; "
                             "give more for a wide net).")(f)


def quiet_option(f):
    return click.option("--quiet", is_flag=True, help="No progress bar (none is drawn when stderr is not a terminal).")(f)


def use_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class _Bar:
    """A tqdm bar, or nothing when progress is off; closed on leaving a `with` block."""

    bar = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TrainingBar(_Bar):
    """`workers.train.train`'s progress callback drawn as a bar: steps, steps/s, ETA, the last
    logged train loss. A no-op object when `enabled` is false."""

    def __init__(self, total_steps: int, label: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, desc=label, unit="step", dynamic_ncols=True, leave=False)

    def __call__(self, steps: int, examples: int, loss: float | None = None) -> None:
        if self.bar is None:
            return
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
        self.bar.update(steps)


class DiscoveryBar(_Bar):
    """`workers.discover.discover`'s progress callback (`progress(n)`, n edges decided or scored)
    drawn as a bar over the graph's edges. A search over thresholds (`--target-f`) decides every
    edge once per ACDC run, so the bar's total grows by one graph per run it sees pass the end."""

    def __init__(self, n_edges: int | None, label: str, enabled: bool):
        self.n_edges, self.bar, self.runs = n_edges, None, 1
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=n_edges, desc=label, unit="edge", dynamic_ncols=True, leave=False)

    def __call__(self, n: int) -> None:
        if self.bar is None:
            return
        if self.n_edges and self.bar.n + n > self.bar.total:
            self.runs += 1
            self.bar.total += self.n_edges
            self.bar.set_postfix(run=self.runs, refresh=False)
        self.bar.update(n)


def callback(bar) -> Callable | None:
    """The callback to hand the worker: None when nothing is drawn, so it skips the calls."""
    return bar if bar.bar is not None else None
