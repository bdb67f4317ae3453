"""(a + b) mod p with learned token embeddings (BIMT section 3.3): all p^2 pairs, 80/20 split."""
from __future__ import annotations

import torch

from tasks.base import Data, Task

P = 59
EMBED_DIM = 8
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
    defaults={"lam": 1e-3, "steps": 20000, "swap_every": 200},
)
