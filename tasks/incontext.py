"""In-context linear regression, BIMT section 3.4 (KindXiaoming/BIMT `incontext_3.4.ipynb`).

Each example is a sequence of real-valued tokens for one random weight w ~ U[-1, 1]:
(0, x1), (y1, 0), (0, x2) with x ~ U[1, 3] and y = w x; the model predicts y1 at position 0 and
y2 at position 2 (output 0), the second only from the pair seen in context. The transformer and
its training are the notebook's, choice by choice (docs/bimt_reference.md):

  from the notebook   data: d = 1, T = 2, n_w = 10,000 sequences, 80/20 split; model:
                      BioTransformer(in_dim=2, out_dim=2, n_head=1, n_embed=32, n_layer=2): a linear
                      input map, no token or positional embedding, MLP 32-128-32 with the tanh GELU,
                      LayerNorms built but never applied (layer_norm False); loss: MSE of output 0 at
                      positions 0 and 2; AdamW lr 1e-3, no weight decay, batch 64, 40,000 steps,
                      float64; lam 1e-3, x10 at steps/4 and again x10 at 3 steps/4 (10,000 and
                      30,000); the cost's per-layer mean, l0 0.5, wire length x2, biases penalised
                      from the start, every layer's wire length; top_k 20.
  deviations          swaps: the published run sets swap_log = 1e6 and never swaps; circuitry swaps
                      every 1,000 steps (the value the notebook leaves commented out) so the `swap`
                      and `bimt` regimes differ from `l1` and `local`. The 2 inputs and 2 outputs
                      do not swap (they are named features; the notebook's in_perm/out_perm would
                      move them). Minibatches are reshuffled epochs (the notebook draws with
                      replacement). Initialisation is nn.Linear's for every weight, as BioLinear's.
"""
from __future__ import annotations

import torch

from circuitry.tasks.base import Data, Task
from circuitry.tasks.recipe import Recipe
from circuitry.tasks.sequence import CircuitTruth, TransformerConfig

N_SEQUENCES = 10000
PAIRS = 2  # T: (x, y) pairs per sequence
TRAIN_FRACTION = 0.8


def sequences(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, 2T-1, 2], targets y_t [n, T, 1]): tokens (0, x1), (y1, 0), ..., (0, xT)."""
    w = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.rand(n, PAIRS, generator=g, dtype=torch.float64) * 2 + 1
    y = w * x
    tokens = torch.zeros(n, 2 * PAIRS, 2, dtype=torch.float64)
    tokens[:, 0::2, 1] = x
    tokens[:, 1::2, 0] = y
    return tokens[:, :-1].float(), y[..., None].float()


def generate(seed: int) -> Data:
    x, y = sequences(N_SEQUENCES, torch.Generator().manual_seed(seed))
    perm = torch.randperm(N_SEQUENCES, generator=torch.Generator().manual_seed(seed + 1))
    n_train = int(TRAIN_FRACTION * N_SEQUENCES)
    tr, te = perm[:n_train], perm[n_train:]
    return Data(x[tr], y[tr], x[te], y[te])


incontext = Task(
    name="incontext",
    kind="regression",
    shape=(),
    generate=generate,
    description="in-context linear regression y = w x from (x, y) pairs in the sequence (BIMT 3.4)",
    transformer=TransformerConfig(n_layers=2, n_heads=1, d_model=32, d_head=32, d_mlp=128, n_ctx=2 * PAIRS - 1,
                                  d_vocab=0, d_input=2, d_output=2, activation="gelu_new", layer_norm=False,
                                  positional=False),
    positions=tuple(range(0, 2 * PAIRS - 1, 2)),
    truth=CircuitTruth(mechanism="no known components: the answer needs w = y1 / x1 from the context pair, "
                                 "which attention must bring to the last position"),
    recipe=Recipe(steps=40000, lr=1e-3, batch_size=64, dtype="float64", lam=1e-3,
                  lam_phases=((0.0, 1.0), (0.25, 10.0), (0.75, 100.0)), bias_from=0.0, cost_norm="mean", l0=0.5,
                  distance_weight=2.0, swap_every=1000, top_k=20),
)
