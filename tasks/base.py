"""What a learning problem is, for circuitry: seeded data, a loss, a circuit metric, a corruption
and (where known) the ground-truth circuit. Everything else in the project reads tasks through
this one small value object."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from circuitry.tasks.recipe import Recipe
from circuitry.tasks.sequence import CircuitTruth, TransformerConfig


def live_edges(weights: list[torch.Tensor]) -> set[tuple[int, int, int]]:
    """Every (layer, src_pos, dst_pos) whose weight is non-zero: a planted net's circuit."""
    return {(l, i, j) for l, w in enumerate(weights) for j, i in torch.nonzero(w).tolist()}


# Offset of the seeded stream that fresh discovery examples are drawn from: seed s's fresh
# examples come from generator seed s + FRESH_SEED_OFFSET, never a training seed of a sweep.
FRESH_SEED_OFFSET = 1_000_003


class TaskDataError(ValueError):
    """A task's data cannot be had (a missing or malformed file); the message says what to fix."""


@dataclass(frozen=True)
class Data:
    """Train/test tensors. Inputs are float features, or long token ids for embedding tasks."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "regression" (MSE metric) or "classification" (KL metric, labels are class ids)
    shape: tuple[int, ...]  # default network: neurons per layer, inputs first
    generate: Callable[[int], Data]
    description: str = ""
    # Token tasks: inputs are `n_tokens` ids in [0, vocab); the network's input layer is the
    # concatenation of their `embed_dim`-wide learned embeddings (shape[0] == n_tokens * embed_dim).
    vocab: int | None = None
    embed_dim: int | None = None
    # Ground truth, where known. `dependencies[k]` is the set of input features output k depends
    # on (0-based). `teacher` builds the checkpoint of a planted net whose live edges
    # (`live_edges(teacher()['weights'])`) are the ground-truth circuit.
    dependencies: tuple[frozenset[int], ...] | None = None
    teacher: Callable[[], dict] | None = None
    # How BIMT's authors trained it (tasks.recipe; a spec or the CLI may override lam, lr, ...).
    recipe: Recipe = field(default_factory=Recipe)
    # Input laid out as a 2-D sheet (rows, cols) for image tasks, else None.
    input_grid: tuple[int, int] | None = None
    # Fresh examples for circuit discovery, where the generator can give them: `fresh(seed, n)`
    # returns (x, y), n examples drawn from the task's generator on a stream of its own, so they
    # are none of the training examples of any seed (continuous inputs: a repeat has probability
    # 0). None: discovery uses the test split (a fixed split: digits, MNIST, modular addition,
    # whose 59^2 pairs leave too few unseen ones).
    fresh: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    # Transformer tasks (tasks.sequence): the model trained, instead of an MLP of `shape` (then
    # `()`); inputs [N, pos] token ids or [N, pos, d_input] floats; targets at the scored
    # `positions`, [N, len(positions)] class ids or [N, len(positions), k] values (compared with
    # the first k outputs); what is known of the circuit; and the name under which the test
    # accuracy is also reported (e.g. induction_accuracy).
    transformer: TransformerConfig | None = None
    positions: tuple[int, ...] = ()
    truth: CircuitTruth | None = None
    accuracy_metric: str | None = None
    # Fixed weights (tracr's compiled programs): the checkpoint training returns unchanged.
    compiled: Callable[[], dict] | None = None

    @property
    def model_kind(self) -> str:
        """What workers.train builds: "mlp" (workers.model) or "transformer" (workers.transformer)."""
        return "mlp" if self.transformer is None else "transformer"

    @property
    def metric(self) -> str:
        """The circuit metric: mean squared error to the full model for regression,
        KL(full || circuit) for classification (docs/design.md, "Metrics")."""
        return "mse" if self.kind == "regression" else "kl"

    @property
    def n_outputs(self) -> int:
        return self.shape[-1] if self.transformer is None else self.transformer.d_output

    def scored(self, pred: torch.Tensor) -> torch.Tensor:
        """A transformer's outputs at the scored positions, [N, len(positions), d_output] (an
        MLP's outputs as they are)."""
        return pred if self.transformer is None else pred[:, list(self.positions)]

    def make_data(self, seed: int) -> Data:
        return self.generate(seed)

    def fresh_examples(self, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` fresh examples for data seed `seed` (see `fresh`); the same for the same (seed, n)."""
        if self.fresh is None:
            raise ValueError(f"task {self.name!r} has a fixed split: no fresh examples")
        return self.fresh(seed, n)

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean squared error or cross-entropy; a transformer's at the scored positions."""
        pred = self.scored(pred)
        if self.kind == "regression":
            if self.transformer is not None:
                pred = pred[..., : y.shape[-1]]
            return torch.mean((pred - y) ** 2)
        return F.cross_entropy(pred.flatten(0, -2), y.flatten())

    def training_loss(self, pred: torch.Tensor, y: torch.Tensor, loss: str = "task") -> torch.Tensor:
        """The loss training minimises: the task's own, or (`"mse_onehot"`, BIMT's MNIST notebook)
        the mean squared error between the logits and the one-hot labels. The circuit metric does
        not change with it (docs/design.md: KL for classification)."""
        if loss == "mse_onehot":
            return F.mse_loss(pred, F.one_hot(y, pred.shape[1]).to(pred.dtype))
        return self.loss(pred, y)

    def corrupt(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """Resample corruption: example n is replaced by another example of the same split, drawn
        by a seeded derangement, so every clean input is paired with a different real input."""
        n = x.shape[0]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
        # one random n-cycle: example order[i] is paired with order[i+1], never with itself
        partner = torch.empty_like(order)
        partner[order] = order.roll(-1)
        return x[partner]
