"""Programs compiled by tracr (RASP -> transformer weights, Lindner et al. 2023): models whose
circuits are known exactly, because the compiler placed every component.

The weights ship with the package (tasks/tracr_weights/*.pt, circuitry.transformer/1 checkpoints
written by scripts/compile_tracr.py; tracr itself, with jax, is needed only to rewrite them). They
are fixed: training a tracr task returns them unchanged (regime vanilla; see workers.train). Each
file also carries the input token names, tracr's own outputs on every example (tests compare
circuitry's forward pass with them) and the ground truth: the components the program uses and the
edges between them (nonzero weights whose write and read subspaces meet), in EAP-IG's names.

  tracr_reverse     reverse a sequence of 3 tokens from {1, 2, 3} (BOS first): length by a
                    selector-width head and MLP, opp_index = length - index - 1 by two MLPs, then a
                    head that attends from i to opp_index; 4 layers, 1 head, d_model 41.
  tracr_frac_prevs  the fraction of the tokens so far that are "x", for 4 tokens from {w, x, y, z}:
                    an MLP computes is-x, a head averages it over the earlier positions (tracr's
                    numerical aggregate); 2 layers, 1 head, d_model 14.

tracr's attention is not causal (the compiler's default); reverse needs it (position i reads
position n - i - 1).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import torch

from circuitry.tasks.base import Data, Task
from circuitry.tasks.recipe import Recipe
from circuitry.tasks.sequence import CircuitTruth, TransformerConfig

TRAIN_FRACTION = 0.8


@lru_cache(maxsize=None)
def compiled_checkpoint(program: str) -> dict:
    """The shipped `circuitry.transformer/1` checkpoint of a program (read once)."""
    with resources.files("circuitry.tasks").joinpath(f"tracr_weights/{program}.pt").open("rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def _generate(program: str, kind: str):
    def generate(seed: int) -> Data:
        ex = compiled_checkpoint(program)["examples"]
        x, expected = ex["tokens"], ex["expected"][:, 1:]  # BOS's output is not scored
        y = expected.argmax(-1) if kind == "classification" else expected
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        n_train = int(TRAIN_FRACTION * len(x))
        tr, te = perm[:n_train], perm[n_train:]
        return Data(x[tr], y[tr], x[te], y[te])
    return generate


def _task(program: str, kind: str, description: str) -> Task:
    ckpt = compiled_checkpoint(program)
    n = ckpt["examples"]["tokens"].shape[1]
    truth = ckpt["truth"]
    return Task(
        name=f"tracr_{program}",
        kind=kind,
        shape=(),
        generate=_generate(program, kind),
        description=description,
        transformer=TransformerConfig(**ckpt["model"]),
        positions=tuple(range(1, n)),
        truth=CircuitTruth(mechanism=description, nodes=frozenset(truth["nodes"]),
                           edges=frozenset(tuple(e) for e in truth["edges"])),
        compiled=lambda: compiled_checkpoint(program),
        recipe=Recipe(steps=1),
    )


tracr_reverse = _task("reverse", "classification", "tracr's compiled reverse of 3 tokens from {1, 2, 3}")
tracr_frac_prevs = _task("frac_prevs", "regression", "tracr's compiled fraction of previous tokens that are 'x'")
