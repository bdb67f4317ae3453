"""Training a transformer task (tasks.sequence) under the five regimes: workers.train_loop's loop with
workers.transformer's model, workers.transformer_bimt's cost and swaps, and the task's loss at its
scored positions. workers.train dispatches here on `task.model_kind`; the regimes, the recipe and
the resolved TrainConfig mean what they mean for MLPs (workers.train's module doc)."""
from __future__ import annotations

import torch

from circuitry.tasks import get_task
from circuitry.workers.cost import add_cost_grad, total_cost
from circuitry.workers.device import pick_device
from circuitry.workers import train_state
from circuitry.workers.names import TRAINED_REGIMES
from circuitry.workers.profile import count_parameters, inference_speed, weights_above
from circuitry.workers.train_config import TrainResult, config_of
from circuitry.workers.train_loop import checkpointer, finish, loop_figures, run_steps
from circuitry.workers.transformer import Transformer, is_weight_matrix
from circuitry.workers.transformer_bimt import Sheet, cost_terms, relocate


def penalised_weights(model: Transformer) -> list[torch.Tensor]:
    """The weight matrices (no biases, embeddings' positions or LayerNorms): what `weights_above`
    and pruning count."""
    return [p for name, p in model.named_parameters() if is_weight_matrix(name)]


@torch.no_grad()
def fit(model: Transformer, task, x, y, x_test, y_test) -> dict[str, float]:
    """Train and test loss (and accuracies at the scored positions for token outputs)."""
    pred, pred_test = model(x), model(x_test)
    out = {"train_loss": float(task.loss(pred, y)), "test_loss": float(task.loss(pred_test, y_test))}
    if task.kind == "classification":
        out["train_accuracy"] = float((task.scored(pred).argmax(-1) == y).float().mean())
        out["test_accuracy"] = float((task.scored(pred_test).argmax(-1) == y_test).float().mean())
        if task.accuracy_metric:
            out[task.accuracy_metric] = out["test_accuracy"]
    return out


def yardstick_cost(model: Transformer, l0: float) -> float:
    """One connection cost for every regime of a task: summed, distance weight 1, biases included."""
    with torch.no_grad():
        return float(total_cost(cost_terms(model, Sheet(model).to(next(model.parameters()).device,
                                                                  next(model.parameters()).dtype),
                                           1.0, l0, "sum", True)))


class _OneThread:
    """One intra-op thread on the CPU while a small model trains: its matmuls are too small to
    split, so a second thread only adds synchronisation, and on a loaded machine (2 cores, several
    processes) it waits for a core each op, which slowed training by an order of magnitude."""

    def __init__(self, device: torch.device):
        self.active = device.type == "cpu"

    def __enter__(self):
        self.saved = torch.get_num_threads()
        if self.active:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)
        return False


def train_transformer(cfg, progress=None, start: dict | None = None, masks: dict[str, torch.Tensor] | None = None,
                      resume: dict | None = None, checkpoint_every: int = 0, on_checkpoint=None):
    """workers.train.train for a transformer task (`cfg` resolved). `masks`: parameter name -> 0/1
    tensor; those weights are held at exactly zero (workers.prune). `resume`, `checkpoint_every`,
    `on_checkpoint`: as workers.train.train's (workers.train_state)."""
    with _OneThread(pick_device(cfg.device)):
        return _train(cfg, progress, start, masks, resume, checkpoint_every, on_checkpoint)


def _train(cfg, progress, start, masks, resume=None, checkpoint_every=0, on_checkpoint=None):

    task = get_task(cfg.task)
    if task.compiled is not None:
        if resume is not None:
            raise train_state.ResumeMismatch("a compiled task is not trained")
        return _compiled(cfg, task)
    recipe = cfg.recipe()
    if recipe.loss != "task":
        raise ValueError(f"task {task.name}: a transformer trains on the task's own loss, not {recipe.loss!r}")
    regime = TRAINED_REGIMES[cfg.regime]
    device = pick_device(cfg.device)
    dtype = getattr(torch, recipe.dtype)
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.transformer()) if start is None else Transformer.from_checkpoint(start)
    model = model.to(device=device, dtype=dtype)
    params = dict(model.named_parameters())
    masks = None if masks is None else {k: m.to(device=device, dtype=dtype) for k, m in masks.items()}

    def apply_masks():
        with torch.no_grad():
            for name, m in (masks or {}).items():
                params[name].mul_(m)

    apply_masks()
    data = task.make_data(cfg.seed)
    as_input = lambda t: t.to(device) if t.dtype == torch.long else t.to(device=device, dtype=dtype)  # noqa: E731
    x, y = as_input(data.x_train), as_input(data.y_train)
    x_test, y_test = as_input(data.x_test), as_input(data.y_test)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sheet = Sheet(model).to(device, dtype)
    weight_factor = recipe.distance_weight if regime.local else 0.0
    # the cost's terms (with their factor tensors) are built once; swaps move .data in place
    terms = {bias: cost_terms(model, sheet, weight_factor, recipe.l0, recipe.cost_norm, bias,
                              recipe.last_layer_distance) for bias in (False, True)}
    record = cfg.record()
    start_at = train_state.begin(resume, record, model, opt)

    def optimise(xb, yb, step: int) -> torch.Tensor:
        """One optimiser step on a batch; returns the batch's loss."""
        loss = task.loss(model(xb), yb)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        for name, m in (masks or {}).items():
            params[name].grad.mul_(m)
        if regime.penalty:
            add_cost_grad(terms[recipe.penalize_bias_at(step, cfg.steps)], recipe.lam_at(step, cfg.steps))
        opt.step()
        apply_masks()
        return loss

    loop = run_steps(cfg, device, x, y, optimise, test_loss=lambda: float(task.loss(model(x_test), y_test)),
                     swap=(lambda: relocate(model, sheet, cfg.top_k, recipe.cost_norm)) if regime.swaps else None,
                     progress=progress, start=start_at,
                     checkpoint=checkpointer(on_checkpoint, model, opt, record), checkpoint_every=checkpoint_every)

    model.eval()
    weights = [w.detach().cpu() for w in penalised_weights(model)]
    metrics = {
        **fit(model, task, x, y, x_test, y_test),
        "connection_cost": yardstick_cost(model, recipe.l0),
        **loop_figures(loop, model, x_test, weights, cfg, len(x)),
    }
    return finish(model, cfg, device, metrics, loop.curve, resumed_from_step=start_at.step)


def _compiled(cfg, task):
    """A task with fixed weights (tracr): its checkpoint, unchanged, with its fit and profile."""

    if cfg.regime != "vanilla":
        raise ValueError(f"task {task.name}'s weights are compiled, not trained: use regime vanilla")
    compiled = task.compiled()
    model = Transformer.from_checkpoint(compiled).eval()
    data = task.make_data(cfg.seed)
    weights = [w.detach() for w in penalised_weights(model)]
    metrics = {**fit(model, task, data.x_train, data.y_train, data.x_test, data.y_test),
               "connection_cost": yardstick_cost(model, cfg.recipe().l0), "train_seconds": 0.0, "swap_rounds": 0,
               "neurons_swapped": 0, "n_parameters": count_parameters(model),
               "inference_per_second_batch1": inference_speed(model, data.x_test, 1),
               "weights_above_1e-2": weights_above(weights, 1e-2)}
    ckpt = {**{k: v for k, v in compiled.items() if k in ("format", "model", "weights", "coordinates")},
            "task": task.name, "regime": cfg.regime, "seed": cfg.seed,
            "config": {**cfg.record(), "compiled": compiled["config"].get("compiler", "")}}
    return TrainResult(checkpoint=ckpt, metrics=metrics, curve=[])


def transformer_fit(ckpt: dict) -> dict[str, float]:
    """A transformer checkpoint's train and test loss (and accuracies) on its own data seed, on the
    CPU, in its recipe's float type (workers.train.checkpoint_fit for transformers)."""

    cfg = config_of(ckpt, regime="vanilla", device="cpu").resolved()
    task, dtype = get_task(cfg.task), getattr(torch, cfg.recipe().dtype)
    data = task.make_data(cfg.seed)
    as_input = lambda t: t if t.dtype == torch.long else t.to(dtype)  # noqa: E731
    model = Transformer.from_checkpoint(ckpt).to(dtype).eval()
    return fit(model, task, as_input(data.x_train), as_input(data.y_train), as_input(data.x_test),
               as_input(data.y_test))
