"""What a training run is asked (TrainConfig, resolved against the task's recipe) and what it
returns (TrainResult), and the minibatch order: shared by the MLP loop (workers.train) and the
transformer loop (workers.train_transformer), which import this and not each other."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from circuitry.tasks import get_task
from circuitry.tasks.recipe import Recipe
from circuitry.workers.names import DEFAULT_LOG_EVERY, RECIPE_DEFAULTS, TRAINED_REGIMES, TRANSFORMER_SHAPE, resolved_swap_every


@dataclass
class TrainConfig:
    task: str
    regime: str
    steps: int
    seed: int = 0
    # None: the task's recipe (tasks.recipe)
    lam: float | None = None
    lr: float | None = None
    swap_every: int | None = None
    top_k: int | None = None
    width: int | None = None  # hidden width override (MLP tasks)
    # transformer tasks: the model's shape overrides (names.TRANSFORMER_SHAPE; None: the task's)
    n_layers: int | None = None
    n_heads: int | None = None
    d_model: int | None = None
    d_head: int | None = None
    d_mlp: int | None = None
    sheets: bool | None = None  # 2-D neuron sheets; None: the task's default (image tasks)
    final_factor: float | None = None  # lam multiplier of the schedule's last phase
    batch_size: int | None = None  # 0: full batch (None: the recipe's, like the fields above)
    log_every: int = DEFAULT_LOG_EVERY
    device: str = "auto"

    def resolved(self) -> "TrainConfig":
        """The config with the task's recipe filled in."""
        task = get_task(self.task)
        if self.regime not in TRAINED_REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}: choose one of {', '.join(TRAINED_REGIMES)}")
        if self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps}")
        shape_set = [k for k in TRANSFORMER_SHAPE if getattr(self, k) is not None]
        if task.transformer is None and shape_set:
            raise ValueError(f"{shape_set[0]} reshapes a transformer; task {self.task} trains an MLP (use width)")
        if task.transformer is not None and self.width is not None:
            raise ValueError(f"width reshapes an MLP; task {self.task} trains a transformer (use {', '.join(TRANSFORMER_SHAPE)})")
        r = task.recipe
        d = asdict(self)
        for key in RECIPE_DEFAULTS:
            d[key] = getattr(r, key) if d[key] is None else d[key]
        d["swap_every"] = resolved_swap_every(self.regime, self.steps, self.swap_every, r)
        d["batch_size"] = (r.batch_size or 0) if self.batch_size is None else self.batch_size
        d["sheets"] = task.input_grid is not None if self.sheets is None else self.sheets
        return TrainConfig(**d)

    def recipe(self) -> Recipe:
        """The task's recipe with this config's overrides applied (call on a resolved config)."""
        r = get_task(self.task).recipe
        return replace(r.with_final_factor(self.final_factor), lam=self.lam, lr=self.lr, swap_every=self.swap_every,
                       top_k=self.top_k, batch_size=self.batch_size or None)

    def record(self) -> dict:
        """Every resolved setting, flat: the checkpoint's `config` (job ids and resume rest on it);
        the transformer shape overrides only where set (an MLP's record is what it was)."""
        recipe = asdict(self.recipe())
        recipe["lam_phases"] = [list(p) for p in recipe["lam_phases"]]
        del recipe["steps"]  # the recipe's default length; the run's own is `steps`
        own = {k: v for k, v in asdict(self).items() if not (k in TRANSFORMER_SHAPE and v is None)}
        return {**recipe, **own}

    def transformer(self):
        """The transformer a transformer task trains, with this config's shape overrides."""
        shape = {k: getattr(self, k) for k in TRANSFORMER_SHAPE if getattr(self, k) is not None}
        return replace(get_task(self.task).transformer, **shape)


@dataclass
class TrainResult:
    checkpoint: dict
    metrics: dict[str, float]
    curve: list[dict] = field(default_factory=list)  # {"step", "train_loss", "test_loss"}
    resumed_from_step: int = 0  # the step a resume state (workers.train_state) took the run on from


def minibatches(n: int, batch_size: int | None, seed: int, device: torch.device, skip: int = 0):
    """Example indices for each step: everything (full batch), or shuffled minibatches of
    `batch_size`, reshuffled every epoch, the last one of an epoch possibly smaller (as a
    DataLoader with shuffle=True, which the MNIST notebook cycles through). `skip`: start after
    that many batches (a resumed run, workers.train_state), drawing the same permutations."""
    if not batch_size or batch_size >= n:
        while True:
            yield None
    g = torch.Generator().manual_seed(seed + 104729)
    while True:
        for chunk in torch.randperm(n, generator=g).split(batch_size):
            if skip:
                skip -= 1
                continue
            yield chunk.to(device)


def config_of(ckpt: dict, **changes) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (its recorded `config`), with `changes`."""
    names = TrainConfig.__dataclass_fields__
    return replace(TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in names}), **changes)
