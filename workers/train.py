"""Training under the five regimes whose circuits circuitry compares.

Following the BIMT reference (KindXiaoming/BIMT, symbolic_formulas_3.1.ipynb), full-batch AdamW
(lr 2e-3, no weight decay) on  loss + lam_t * cost,  where cost is the connection cost

    vanilla  no penalty
    l1       sum |W| * l0                   (weight factor 0)
    local    sum |W| * (|dx| + l0)          (weight factor 1)
    swap     l1 + neuron swaps
    bimt     local + neuron swaps

and the schedule is the reference's: lam for the first quarter of steps, 10 lam for the middle
half, then lam again (the reference multiplies by 10, then by 0.1) for the last quarter, where
biases are penalised too. `final_factor` changes that last factor for users who want lam/10 there.
Swaps run after every `swap_every`-th step (the reference's `(step+1) % swap_log == 0`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from tasks import get_task
from workers.model import CoordMLP, line_coordinates, sheet_coordinates, sheet_shape
from workers.profile import PeakMemory, count_parameters, inference_speed, weights_above
from workers.swap import relocate


@dataclass(frozen=True)
class Regime:
    penalty: bool
    local: bool
    swaps: bool


REGIMES = {
    "vanilla": Regime(penalty=False, local=False, swaps=False),
    "l1": Regime(penalty=True, local=False, swaps=False),
    "local": Regime(penalty=True, local=True, swaps=False),
    "swap": Regime(penalty=True, local=False, swaps=True),
    "bimt": Regime(penalty=True, local=True, swaps=True),
}


@dataclass
class TrainConfig:
    task: str
    regime: str
    steps: int
    seed: int = 0
    lam: float | None = None  # None: the task's default
    lr: float = 2e-3
    swap_every: int | None = None  # None: the task's default
    top_k: int = 5
    width: int | None = None  # hidden width override
    sheets: bool | None = None  # 2-D neuron sheets; None: the task's default (image tasks)
    final_factor: float = 1.0  # lam multiplier in the last quarter, relative to lam
    log_every: int = 100
    device: str = "auto"

    def resolved(self) -> "TrainConfig":
        """The config with task defaults filled in (what is recorded with the model)."""
        task = get_task(self.task)
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}: choose one of {', '.join(REGIMES)}")
        if self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps}")
        d = asdict(self)
        d["lam"] = task.defaults.get("lam", 1e-3) if self.lam is None else self.lam
        d["swap_every"] = task.defaults.get("swap_every", 200) if self.swap_every is None else self.swap_every
        d["sheets"] = task.input_grid is not None if self.sheets is None else self.sheets
        return TrainConfig(**d)


@dataclass
class TrainResult:
    checkpoint: dict
    metrics: dict[str, float]
    curve: list[dict] = field(default_factory=list)  # {"step", "train_loss", "test_loss"}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def network_shape(task, width: int | None) -> list[int]:
    shape = list(task.shape)
    if width is not None:
        shape[1:-1] = [width] * (len(shape) - 2)
    return shape


def layout(shape: list[int], sheets: bool, input_grid: tuple[int, int] | None) -> list[torch.Tensor]:
    """Neuron coordinates: BIMT's 1-D lines, or 2-D sheets (input = the image grid, hidden layers
    the most nearly square grid, outputs a row) as in BIMT's MNIST network."""
    if not sheets:
        return [line_coordinates(n) for n in shape]
    grids = [input_grid or sheet_shape(shape[0])] + [sheet_shape(n) for n in shape[1:-1]] + [(1, shape[-1])]
    return [sheet_coordinates(r, c) for r, c in grids]


def lam_at(step: int, steps: int, lam: float, final_factor: float) -> float:
    if step < steps // 4:
        return lam
    if step < 3 * steps // 4:
        return 10 * lam
    return lam * final_factor


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred.argmax(1) == y).float().mean())


def train(config: TrainConfig, progress: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train one model. `progress(steps, examples)` is called every `log_every` steps with the
    increments since the last call (the orchestrator turns them into Prometheus counters)."""
    cfg = config.resolved()
    task = get_task(cfg.task)
    regime = REGIMES[cfg.regime]
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    shape = network_shape(task, cfg.width)
    model = CoordMLP(
        shape, layout(shape, cfg.sheets, task.input_grid), vocab=task.vocab, embed_dim=task.embed_dim
    ).to(device)
    data = task.make_data(cfg.seed)
    x, y = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    weight_factor = 1.0 if regime.local else 0.0

    curve, swap_seconds, n_swapped, last_logged = [], 0.0, 0, 0
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        for step in range(cfg.steps):
            loss = task.loss(model(x), y)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            if regime.penalty:  # the gradient of lam * connection cost, added in closed form
                lam = lam_at(step, cfg.steps, cfg.lam, cfg.final_factor)
                model.add_connection_cost_grad(lam, weight_factor, penalize_bias=step >= 3 * cfg.steps // 4)
            opt.step()
            if regime.swaps and (step + 1) % cfg.swap_every == 0:
                t0 = time.perf_counter()
                n_swapped += relocate(model, cfg.top_k)
                swap_seconds += time.perf_counter() - t0
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                with torch.no_grad():
                    test_loss = float(task.loss(model(x_test), y_test))
                curve.append({"step": step, "train_loss": float(loss.detach()), "test_loss": test_loss})
                if progress:
                    progress(step + 1 - last_logged, (step + 1 - last_logged) * len(x))
                    last_logged = step + 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        pred, pred_test = model(x), model(x_test)
        cost = float(model.connection_cost(1.0, penalize_bias=True))
    weights = [l.weight.detach().cpu() for l in model.linears]
    metrics = {
        "train_loss": float(task.loss(pred, y)),
        "test_loss": float(task.loss(pred_test, y_test)),
        "connection_cost": cost,
        "train_seconds": train_seconds,
        "steps_per_second": cfg.steps / train_seconds,
        "swap_seconds": swap_seconds,
        "swap_share": swap_seconds / train_seconds,
        "neurons_swapped": n_swapped,
        "peak_memory_bytes": mem.peak_bytes,
        "peak_memory_delta_bytes": mem.delta_bytes,
        "n_parameters": count_parameters(model),
        "inference_per_second_batch1": inference_speed(model, x_test, 1),
        "inference_per_second_batch1024": inference_speed(model, x_test, 1024),
        "weights_above_1e-2": weights_above(weights, 1e-2),
        "weights_above_5e-2": weights_above(weights, 5e-2),
        "weights_above_1e-1": weights_above(weights, 1e-1),
    }
    if task.kind == "classification":
        metrics["train_accuracy"] = _accuracy(pred, y)
        metrics["test_accuracy"] = _accuracy(pred_test, y_test)
    record = asdict(cfg)
    record["device"] = device.type
    ckpt = model.cpu().to_checkpoint(cfg.task, cfg.regime, cfg.seed, record)
    return TrainResult(checkpoint=ckpt, metrics=metrics, curve=curve)
