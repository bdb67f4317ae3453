"""(a + b) mod p with learned token embeddings (BIMT section 3.3): all p^2 pairs, 80/20 split,
trained as modular_addition_3.3.ipynb does: 32-dim embeddings, the two tokens' dimension i folded
onto one input position (in_fold 2), the per-layer *mean* connection cost with l0 0.5 and wire
length weighted 2, biases and the embedding penalised from the start, lam 0.1 (x10 in the middle
half), lr 1e-3, float64, the 30 most connected neurons of each layer relocated every 200 steps."""
from __future__ import annotations

import torch

from circuitry.tasks.base import Data, Task
from circuitry.tasks.recipe import Recipe

P = 59
EMBED_DIM = 32
TRAIN_FRACTION = 0.8


def generate(seed: int) -> Data:
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], 1)
    y = (x[:, 0] + x[:, 1]) % P
    perm = torch.randperm(P * P, generator=torch.Generator().manual_seed(seed))
    n_train = int(TRAIN_FRACTION * P * P)
    tr, te = perm[:n_train], perm[n_train:]
    return Data(x[tr], y[tr], x[te], y[te])


modular_addition = Task(
    name="modular_addition",
    kind="classification",
    shape=(2 * EMBED_DIM, 50, 50, P),
    generate=generate,
    description=f"(a+b) mod {P}, tokens embedded in {EMBED_DIM} dims each",
    vocab=P,
    embed_dim=EMBED_DIM,
    recipe=Recipe(lam=0.1, lr=1e-3, dtype="float64", bias_from=0.0, cost_norm="mean", l0=0.5, distance_weight=2.0,
                  in_fold=2, top_k=30),
)
