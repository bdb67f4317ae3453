"""Induction: sequences of random tokens whose second half repeats the first, learnt by a 2-layer
attention-only transformer (Olsson et al. 2022, "In-context learning and induction heads").

A sequence is L tokens drawn without replacement from a vocabulary of V, then the same L tokens
again. At position t of the second half the next token is the one that followed the current
token's earlier occurrence, which only an induction mechanism can know: the loss and
`induction_accuracy` score positions L .. 2L-2 (their targets x[t+1] = x[t+1-L]); the first half
is unpredictable and is not scored. Drawing the first half without replacement makes every
earlier occurrence unique, so the mechanism has one answer.

The known circuit (`truth`): a previous-token head in layer 0 (at position s it attends to s-1
and writes that token into the residual stream) composes through the KEYS of an induction head in
layer 1 (at position t it attends to the position s whose previous token equals x[t], and copies
x[s] to the logits through its OV circuit). Which head of each layer plays the role is found
from the attention patterns with `head_scores` (TransformerLens's previous-token and induction
scores). The defaults are sized to form the mechanism reliably on a 2-core CPU in minutes.
"""
from __future__ import annotations

import torch

from circuitry.tasks.base import Data, Task
from circuitry.tasks.recipe import Recipe
from circuitry.tasks.sequence import CircuitTruth, TransformerConfig

VOCAB = 30
HALF = 10  # tokens before the repeat; sequences are 2 * HALF long
N_TRAIN, N_TEST = 20000, 2000


def sequences(n: int, generator: torch.Generator, vocab: int = VOCAB, half: int = HALF) -> torch.Tensor:
    """[n, 2 * half] token ids: `half` distinct random tokens, then the same again."""
    first = torch.rand(n, vocab, generator=generator).argsort(1)[:, :half]
    return torch.cat([first, first], 1)


def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets at the scored positions HALF .. 2 HALF - 2)."""
    return x, x[:, HALF + 1:]


def generate(seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = split(sequences(N_TRAIN, g))
    x_test, y_test = split(sequences(N_TEST, g))
    return Data(x_train, y_train, x_test, y_test)


def head_scores(pattern: torch.Tensor, half: int = HALF) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous-token score, induction score) of every head from its attention pattern
    [batch, head, query, key] on repeated sequences: the mean attention from each position to
    the one before it, and from each second-half position t to t - half + 1."""
    n = pattern.shape[-1]
    q = torch.arange(1, n)
    prev = pattern[:, :, q, q - 1].mean((0, 2))
    t = torch.arange(half, n)
    induction = pattern[:, :, t, t - half + 1].mean((0, 2))
    return prev, induction


induction = Task(
    name="induction",
    kind="classification",
    shape=(),
    generate=generate,
    description=f"{HALF} random tokens of {VOCAB}, repeated; predict the repeat (2-layer attention-only)",
    transformer=TransformerConfig(n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=0, n_ctx=2 * HALF,
                                  d_vocab=VOCAB, d_input=0, d_output=VOCAB, layer_norm=True),
    positions=tuple(range(HALF, 2 * HALF - 1)),
    truth=CircuitTruth(
        mechanism="a previous-token head in layer 0 composes through the keys of an induction head in layer 1",
        roles={"previous_token": 0, "induction": 1},
    ),
    accuracy_metric="induction_accuracy",
    # No BIMT notebook trains induction: the in-context notebook's cost (per-layer mean, l0 0.5,
    # wire length x2, biases from the start) and optimiser, with lam and steps sized for this task.
    recipe=Recipe(steps=2000, lr=1e-3, batch_size=64, lam=1e-3, lam_phases=((0.0, 1.0), (0.25, 10.0), (0.75, 1.0)),
                  bias_from=0.0, cost_norm="mean", l0=0.5, distance_weight=2.0, swap_every=200, top_k=20),
)
