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

In `induction` the repeat sits a fixed HALF positions back, so a layer-1 head can find the copy
from positions alone. `induction_shifted` moves it: r noise tokens (r uniform in 0 .. SHIFT), the
HALF tokens, SHIFT - r noise tokens, then the HALF tokens again at fixed (scored) positions; every
token of a sequence is distinct, so the copy is HALF .. HALF + SHIFT back and only its token
finds it. `induction` itself is unchanged.
"""
from __future__ import annotations

import dataclasses

import torch

from circuitry.tasks.base import Data, Task
from circuitry.tasks.recipe import Recipe
from circuitry.tasks.sequence import CircuitTruth, TransformerConfig

VOCAB = 30
HALF = 10  # tokens before the repeat; sequences are 2 * HALF long
SHIFT = 5  # induction_shifted: noise tokens around the first copy (sequences 2 * HALF + SHIFT long)
N_TRAIN, N_TEST = 20000, 2000


def sequences(n: int, generator: torch.Generator, vocab: int = VOCAB, half: int = HALF) -> torch.Tensor:
    """[n, 2 * half] token ids: `half` distinct random tokens, then the same again."""
    first = torch.rand(n, vocab, generator=generator).argsort(1)[:, :half]
    return torch.cat([first, first], 1)


def shifted_sequences(n: int, generator: torch.Generator, vocab: int = VOCAB, half: int = HALF,
                      shift: int = SHIFT) -> torch.Tensor:
    """[n, 2 * half + shift]: r noise tokens (r uniform in 0 .. shift), `half` tokens, shift - r
    noise tokens, the `half` tokens again; all half + shift tokens of a sequence distinct."""
    tokens = torch.rand(n, vocab, generator=generator).argsort(1)[:, :half + shift]
    block, noise = tokens[:, :half], tokens[:, half:]
    r = torch.randint(0, shift + 1, (n, 1), generator=generator)
    j = torch.arange(half + shift)
    in_block = (j >= r) & (j < r + half)
    from_block = block.gather(1, (j - r).clamp(0, half - 1))
    from_noise = noise.gather(1, torch.where(j < r, j, j - half).clamp(0, shift - 1))
    return torch.cat([torch.where(in_block, from_block, from_noise), block], 1)


def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets at the scored positions: the last HALF - 1 of the second copy)."""
    return x, x[:, x.shape[1] - HALF + 1:]


def generate(seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = split(sequences(N_TRAIN, g))
    x_test, y_test = split(sequences(N_TEST, g))
    return Data(x_train, y_train, x_test, y_test)


def generate_shifted(seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = split(shifted_sequences(N_TRAIN, g))
    x_test, y_test = split(shifted_sequences(N_TEST, g))
    return Data(x_train, y_train, x_test, y_test)


def head_scores(pattern: torch.Tensor, half: int = HALF, tokens: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous-token score, induction score) of every head from its attention pattern
    [batch, head, query, key] on repeated sequences: the mean attention from each position to
    the one before it, and from each position t of the last `half` to the position after the
    earlier occurrence of its token: t - half + 1 without `tokens` [batch, position] (the repeat
    of `induction`), found in `tokens` with them (any repeat offset)."""
    n = pattern.shape[-1]
    q = torch.arange(1, n)
    prev = pattern[:, :, q, q - 1].mean((0, 2))
    t = torch.arange(n - half, n)
    if tokens is None:
        return prev, pattern[:, :, t, t - half + 1].mean((0, 2))
    earlier = (tokens[:, t, None] == tokens[:, None, :]) & (torch.arange(n) < t[:, None])  # [batch, t, key]
    key = earlier.float().argmax(-1) + 1  # the first earlier occurrence's next position
    index = key[:, None, :, None].expand(-1, pattern.shape[1], -1, 1)
    induction = pattern[:, :, t].gather(-1, index).squeeze(-1).mean((0, 2))
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


induction_shifted = dataclasses.replace(
    induction,
    name="induction_shifted",
    generate=generate_shifted,
    description=f"{HALF} random tokens of {VOCAB} among 0-{SHIFT} noise tokens, repeated at a varying offset; "
                f"predict the repeat (2-layer attention-only)",
    transformer=dataclasses.replace(induction.transformer, n_ctx=2 * HALF + SHIFT),
    positions=tuple(range(HALF + SHIFT, 2 * HALF + SHIFT - 1)),
)
