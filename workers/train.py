"""Training under the five regimes whose circuits circuitry compares.

Every task is trained as BIMT's authors trained it (KindXiaoming/BIMT notebooks): the task's
`Recipe` (tasks.recipe, docs/bimt_reference.md) gives the optimiser settings, the loss, minibatches,
the float type, the layout and the connection cost. AdamW (no weight decay) minimises
loss + lam_t * cost,  where cost (tasks.recipe) is, per regime,

    vanilla  no penalty
    l1       |W| * l0                                  (distance weight 0)
    local    |W| * (distance_weight * wire length + l0)
    swap     l1 + neuron swaps
    bimt     local + neuron swaps

summed or averaged per layer as the recipe says, lam_t following the recipe's phases (e.g. lam,
10 lam in the middle half, lam again), biases penalised from the recipe's `bias_from` on.
Swaps run after every `swap_every`-th step (the reference's `(step+1) % swap_log == 0`).
A TrainConfig field left None takes the recipe's value; the resolved settings, all of them, are
recorded in the checkpoint's `config`.
"""
from __future__ import annotations

from typing import Callable

import torch

from circuitry.tasks import get_task
from circuitry.tasks.recipe import Recipe
from circuitry.workers.device import pick_device
from circuitry.workers.model import (CoordMLP, folded_line_coordinates, line_coordinates, ring_coordinates,
                           sheet_coordinates, sheet_shape)
from circuitry.workers.names import TRAINED_REGIMES, network_shape
from circuitry.workers.profile import peak_tensor_bytes
from circuitry.workers.swap import relocate
from circuitry.workers import train_state
from circuitry.workers.train_config import TrainConfig, TrainResult, config_of, minibatches
from circuitry.workers.train_loop import batch_of, checkpointer, finish, loop_figures, run_steps

__all__ = ["TrainConfig", "TrainResult", "checkpoint_fit", "config_of", "layout", "minibatches", "train"]


def layout(shape: list[int], sheets: bool, input_grid: tuple[int, int] | None, recipe: Recipe = Recipe()
           ) -> list[torch.Tensor]:
    """Neuron coordinates: BIMT's 1-D lines (the input folded as the recipe says), or 2-D sheets
    (input = the image grid, hidden layers the most nearly square grid, outputs a row or BIMT's
    MNIST ring)."""
    if not sheets:
        return [folded_line_coordinates(shape[0], recipe.in_fold)] + [line_coordinates(n) for n in shape[1:]]
    grids = [input_grid or sheet_shape(shape[0])] + [sheet_shape(n) for n in shape[1:-1]]
    coords = [sheet_coordinates(r, c) for r, c in grids]
    if recipe.output_layout == "ring":
        return coords + [ring_coordinates(shape[-1])]
    return coords + [sheet_coordinates(1, shape[-1])]


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred.argmax(1) == y).float().mean())


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    """R^2 averaged over the outputs (scikit-learn's r2_score, 'uniform_average')."""
    y, pred = y.reshape(len(y), -1).double(), pred.reshape(len(pred), -1).double()
    residual = ((y - pred) ** 2).sum(0)
    total = ((y - y.mean(0)) ** 2).sum(0)
    return float((1 - residual / total).mean())


def _loss_fn(task, recipe: Recipe):
    return lambda pred, target: task.training_loss(pred, target, recipe.loss)


@torch.no_grad()
def _fit(model: CoordMLP, task, loss_fn, x, y, x_test, y_test) -> dict[str, float]:
    """Train and test loss under the recipe's loss (and accuracies for classification)."""
    pred, pred_test = model(x), model(x_test)
    out = {"train_loss": float(loss_fn(pred, y)), "test_loss": float(loss_fn(pred_test, y_test))}
    if task.kind == "classification":
        out["train_accuracy"] = _accuracy(pred, y)
        out["test_accuracy"] = _accuracy(pred_test, y_test)
    else:  # task performance on a scale loss is not: 1 for a perfect fit, 0 for the mean's
        out["train_r2"] = _r2(pred, y)
        out["test_r2"] = _r2(pred_test, y_test)
    return out


def checkpoint_fit(ckpt: dict) -> dict[str, float]:
    """A checkpoint's train and test loss (and accuracies) on its own data seed, on the CPU, in
    its recipe's float type and loss."""
    if ckpt.get("format") == "circuitry.transformer/1":
        from circuitry.workers.train_transformer import transformer_fit
        return transformer_fit(ckpt)
    cfg = config_of(ckpt, regime="vanilla", device="cpu").resolved()
    task, recipe = get_task(cfg.task), cfg.recipe()
    dtype = getattr(torch, recipe.dtype)
    data = task.make_data(cfg.seed)
    x_of = lambda t: t if task.vocab else t.to(dtype)  # noqa: E731
    y_of = lambda t: t if task.kind == "classification" else t.to(dtype)  # noqa: E731
    model = CoordMLP.from_checkpoint(ckpt).to(dtype).eval()
    return _fit(model, task, _loss_fn(task, recipe), x_of(data.x_train), y_of(data.y_train),
                x_of(data.x_test), y_of(data.y_test))


@torch.no_grad()
def _apply_masks(model: CoordMLP, masks: list[torch.Tensor]) -> None:
    for linear, m in zip(model.linears, masks):
        linear.weight.mul_(m)


def train(config: TrainConfig, progress: Callable[[int, int, float], None] | None = None, start: dict | None = None,
          masks: list[torch.Tensor] | None = None,
          prune_at: Callable[[int, CoordMLP], list[torch.Tensor] | None] | None = None,
          resume: dict | None = None, checkpoint_every: int = 0,
          on_checkpoint: Callable[[dict], None] | None = None) -> TrainResult:
    """Train one model. `progress(steps, examples, train_loss)` is called every `log_every` steps
    with the increments since the last call (the orchestrator turns them into Prometheus counters;
    the CLI draws a bar) and the loss just logged.
    `start`: a checkpoint of the same shape to continue from instead of a fresh initialisation
    (its weights, biases, embedding and layout; the optimiser starts afresh). `masks`: one 0/1
    tensor per weight matrix; the weights where it is 0 are held at exactly zero (their gradient
    is masked, so AdamW's moments for them stay zero, and they are re-zeroed after every step).
    workers.prune fine-tunes a pruned network with both. `prune_at(step, model)`, called after
    every step, may return new masks, which replace `masks` from then on (gradual pruning).
    `on_checkpoint(state)` is called after every `checkpoint_every`-th step but the last with the
    run's state (workers.train_state); `resume`, such a state of this run, goes on from its step
    (ResumeMismatch, before any step, when it is not one). Gradual pruning keeps state of its
    own: a run with `prune_at` takes no checkpoints."""
    cfg = config.resolved()
    task = get_task(cfg.task)
    if task.model_kind == "transformer":  # masks: parameter name -> 0/1 tensor there
        from circuitry.workers.train_transformer import train_transformer
        return train_transformer(cfg, progress, start, masks, resume, checkpoint_every, on_checkpoint)
    recipe = cfg.recipe()
    regime = TRAINED_REGIMES[cfg.regime]
    device = pick_device(cfg.device)
    dtype = getattr(torch, recipe.dtype)
    torch.manual_seed(cfg.seed)
    shape = network_shape(task.shape, cfg.width)
    if start is None:
        model = CoordMLP(
            shape, layout(shape, cfg.sheets, task.input_grid, recipe), l0=recipe.l0, vocab=task.vocab,
            embed_dim=task.embed_dim, distance=recipe.distance, in_fold=recipe.in_fold,
        )
    else:
        if list(start["shape"]) != shape:
            raise ValueError(f"the start checkpoint's shape {start['shape']} is not this config's {shape}")
        model = CoordMLP.from_checkpoint(start)
    model = model.to(device=device, dtype=dtype)
    masks = None if masks is None else [m.to(device=device, dtype=dtype) for m in masks]
    if masks is not None:
        _apply_masks(model, masks)
    data = task.make_data(cfg.seed)
    as_input = lambda t: t.to(device) if task.vocab else t.to(device=device, dtype=dtype)  # noqa: E731
    as_target = lambda t: t.to(device) if task.kind == "classification" else t.to(device=device, dtype=dtype)  # noqa: E731
    x, y = as_input(data.x_train), as_target(data.y_train)
    x_test, y_test = as_input(data.x_test), as_target(data.y_test)
    loss_fn = _loss_fn(task, recipe)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    weight_factor = recipe.distance_weight if regime.local else 0.0
    record = cfg.record()
    start_at = train_state.begin(resume, record, model, opt)
    if prune_at is not None:
        checkpoint_every = 0

    def optimise(model: CoordMLP, opt: torch.optim.Optimizer, xb, yb, step: int) -> torch.Tensor:
        """One optimiser step on a batch; returns the batch's loss."""
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if masks is not None:
            for linear, m in zip(model.linears, masks):
                linear.weight.grad.mul_(m)
        if regime.penalty:  # the gradient of lam * connection cost, added in closed form
            model.add_connection_cost_grad(
                recipe.lam_at(step, cfg.steps), weight_factor, penalize_bias=recipe.penalize_bias_at(step, cfg.steps),
                norm=recipe.cost_norm, last_layer_distance=recipe.last_layer_distance)
        opt.step()
        if masks is not None:
            _apply_masks(model, masks)
        return loss

    def prune(step: int) -> None:
        nonlocal masks
        if (new_masks := prune_at(step, model)) is not None:
            masks = [m.to(device=device, dtype=dtype) for m in new_masks]
            _apply_masks(model, masks)

    loop = run_steps(cfg, device, x, y, lambda xb, yb, step: optimise(model, opt, xb, yb, step),
                     test_loss=lambda: float(loss_fn(model(x_test), y_test)),
                     swap=(lambda: relocate(model, cfg.top_k, recipe.cost_norm, recipe.swap_inputs))
                     if regime.swaps else None,
                     after_step=prune if prune_at is not None else None, progress=progress, start=start_at,
                     checkpoint=checkpointer(on_checkpoint, model, opt, record), checkpoint_every=checkpoint_every)

    # the allocator's view of one full-size step (workers.profile), on a copy: training is not touched
    n_batch = batch_of(cfg, len(x))
    tensor_bytes = peak_tensor_bytes(model, opt, lambda m, o: optimise(m, o, x[:n_batch], y[:n_batch], cfg.steps - 1),
                                     device)
    model.eval()
    with torch.no_grad():
        # one yardstick for every regime of a task: summed, distance weight 1, biases included
        cost = float(model.connection_cost(1.0, penalize_bias=True))
    weights = [l.weight.detach().cpu() for l in model.linears]
    metrics = {
        **_fit(model, task, loss_fn, x, y, x_test, y_test),
        "connection_cost": cost,
        **loop_figures(loop, model, x_test, weights, cfg, len(x)),
        "peak_tensor_bytes": tensor_bytes,
    }
    return finish(model, cfg, device, metrics, loop.curve, resumed_from_step=start_at.step)
