"""The `prune` regime: a vanilla network, magnitude-pruned to the weight count of the matched BIMT
network, then fine-tuned for a short fixed number of steps with the pruned weights held at zero.

It is the control for "BIMT's circuits are sparse": a network that is merely small (as many weights
as BIMT keeps, chosen after ordinary training) without BIMT's penalty, locality or swaps.

The weight count of the matched BIMT network. BIMT's weights are small, not zero: an L1 penalty
under Adam leaves them jittering around 0. Its count is the number of weights with
|w| > match_fraction * max|w|, the maximum taken over every weight matrix of the network, with
match_fraction 1e-2 by default: exactly the train record's `weights_above_1e-2` figure
(workers.profile.weights_above), so the target is a number already in the BIMT job's record
(5e-2 and 1e-1 name the record's other two figures). 1e-2 is the loosest of the three, which gives
the pruned network the largest budget: the control is not handicapped by a strict cut, and a
weight of BIMT's below 1% of its largest moves a pre-activation by little (`match_pruned_test_loss`
in the record is the BIMT network's own test loss with only those weights kept, a check of that).
Only the weight matrices count and are pruned; biases and a token task's embedding stay dense in
every network, as the circuit's edges are the weights only (docs/formats.md, circuit.parquet).

Per-layer pruning. Layer l of the vanilla network keeps its k_l largest |w| (ties: the lower flat
index), k_l the matched network's count in layer l under the threshold above; so the two networks
have the same number of weights in every layer, and the comparison is about which weights, not
how a budget is spread over layers. Global magnitude pruning would instead compare raw |w| across
layers whose scales differ by their fan-in (PyTorch's init is U(±1/sqrt(fan_in))), and so prune
the wide-input layers hardest for a reason that is the parametrisation's, not learned.

Fine-tuning: `finetune_steps` steps of the vanilla recipe (AdamW afresh at the recipe's lr, no
penalty, no swaps, the recipe's minibatches from the start of the data seed's order), through
workers.train.train with `start` and `masks`. The returned checkpoint is the vanilla one's format
with regime "prune"; its `config` is the vanilla one's with steps = finetune_steps plus the prune
fields below.

Transformers (`circuitry.transformer/1`): the "layers" are the weight matrices W_E (or W_in), each
block's W_Q, W_K, W_V, W_O, the MLPs' W_in and W_out, and W_U (workers.train_transformer
.penalised_weights: no biases, W_pos or LayerNorms), pruned per tensor the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from circuitry.workers.names import DEFAULT_MATCH_FRACTION
from circuitry.workers.train import TrainResult, checkpoint_fit, config_of, train
from circuitry.workers.transformer import is_weight_matrix

@dataclass(frozen=True)
class PruneConfig:
    finetune_steps: int
    match_fraction: float = DEFAULT_MATCH_FRACTION
    log_every: int = 100
    device: str = "auto"


def default_finetune_steps(steps: int) -> int:
    """A tenth of the vanilla training's steps (at least 1): short next to training at any length."""
    return max(1, steps // 10)


def layer_counts(weights: list[torch.Tensor], fraction: float) -> list[int]:
    """Per layer, the weights with |w| > fraction * max|w| over all layers (their sum is
    workers.profile.weights_above(weights, fraction))."""
    top = max(float(w.abs().max()) for w in weights)
    return [int((w.abs() > fraction * top).sum()) for w in weights]


def magnitude_masks(weights: list[torch.Tensor], counts: list[int]) -> list[torch.Tensor]:
    """Per layer, a 0/1 mask keeping exactly counts[l] weights of largest |w| (ties: lower index)."""
    masks = []
    for w, k in zip(weights, counts):
        flat = w.detach().abs().flatten().double()
        order = torch.sort(flat, descending=True, stable=True).indices  # stable: ties keep index order
        m = torch.zeros_like(flat, dtype=torch.float32)
        m[order[:k]] = 1.0
        masks.append(m.reshape(w.shape))
    return masks


def matrices(ckpt: dict) -> dict[str, torch.Tensor]:
    """The prunable weight matrices by name: an MLP's layers ("0", "1", ...), a transformer's W_
    matrices but W_pos (the names of its `weights`)."""
    w = ckpt["weights"]
    if isinstance(w, dict):
        return {k: v for k, v in w.items() if is_weight_matrix(k)}
    return {str(l): t for l, t in enumerate(w)}


def masked(ckpt: dict, masks: list[torch.Tensor]) -> dict:
    w = ckpt["weights"]
    if isinstance(w, dict):
        return {**ckpt, "weights": {**w, **{k: m * w[k] for k, m in zip(matrices(ckpt), masks)}}}
    return {**ckpt, "weights": [t * m for t, m in zip(w, masks)]}


def model_shape(ckpt: dict):
    """What two checkpoints must share to be pruned one to the other: the MLP's shape, or the
    transformer's config."""
    return ckpt["model"] if "model" in ckpt else list(ckpt["shape"])


def _check_pair(vanilla: dict, match: dict) -> None:
    if vanilla.get("regime") != "vanilla":
        raise ValueError(f"the model to prune must be a vanilla one, got regime {vanilla.get('regime')!r}")
    if vanilla["task"] != match["task"] or model_shape(vanilla) != model_shape(match):
        raise ValueError(f"the matched model ({match['task']} {model_shape(match)}) is not of the vanilla "
                         f"model's task and shape ({vanilla['task']} {model_shape(vanilla)})")


def prune(vanilla: dict, match: dict, cfg: PruneConfig,
          progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Prune `vanilla` to `match`'s per-layer weight counts, fine-tune, return a "prune" checkpoint."""
    _check_pair(vanilla, match)
    if cfg.finetune_steps < 1:
        raise ValueError(f"finetune_steps must be a positive integer, got {cfg.finetune_steps}")
    if not 0 < cfg.match_fraction < 1:
        raise ValueError(f"match_fraction must be in (0, 1), got {cfg.match_fraction}")
    counts = layer_counts(list(matrices(match).values()), cfg.match_fraction)
    masks = magnitude_masks(list(matrices(vanilla).values()), counts)
    pruned = masked(vanilla, masks)
    before = checkpoint_fit(pruned)
    match_kept = checkpoint_fit(masked(match, magnitude_masks(list(matrices(match).values()), counts)))
    # the vanilla run's own settings (optimiser, minibatches, loss), for finetune_steps steps
    config = config_of(vanilla, steps=cfg.finetune_steps, log_every=cfg.log_every, device=cfg.device)
    by_name = dict(zip(matrices(vanilla), masks)) if isinstance(vanilla["weights"], dict) else masks
    result = train(config, progress, start=pruned, masks=by_name)
    ckpt = result.checkpoint
    ckpt["regime"] = "prune"
    ckpt["config"] = {**ckpt["config"], "regime": "prune", "finetune_steps": cfg.finetune_steps,
                      "vanilla_steps": vanilla["config"]["steps"], "match_fraction": cfg.match_fraction,
                      "match_regime": match.get("regime"), "match_steps": match["config"]["steps"],
                      "match_lam": match["config"]["lam"], "layer_counts": counts}
    nonzero = sum(int((w != 0).sum()) for w in matrices(ckpt).values())
    result.metrics.update({
        "weights_nonzero": nonzero, "prune_target": sum(counts),
        **{f"pruned_{k}": v for k, v in before.items()},
        "match_pruned_test_loss": match_kept["test_loss"],
    })
    return result


# ---------------------------------------------------------------- gradual magnitude pruning
# The control a reviewer accepts (issue 29): one-shot pruning to bimt's weight count, fine-tuned a
# tenth of a run, killed many nets and compared at equal weights rather than equal task
# performance. Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune") instead
# fine-tunes the vanilla net for as long as a penalised run trains, raising each layer's sparsity
# along a cubic schedule, so the net adapts as it loses weights; over a grid of final sparsities
# it traces an accuracy-edges curve that bimt's lam grid is compared with at a common accuracy.


@dataclass(frozen=True)
class GradualConfig:
    sparsity: float  # final fraction of each weight matrix pruned
    steps: int  # fine-tuning steps: as many as the penalised runs train
    prune_fraction: float = 0.75  # the schedule ends here; the rest fine-tunes at the final sparsity
    n_prunes: int = 20  # pruning events along the schedule
    log_every: int = 100
    device: str = "auto"


def cubic_sparsity(t: int, end: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule: s_t = s_f + (s_i - s_f) (1 - t / end)^3, s_f from `end` on."""
    if t >= end:
        return final
    return final + (initial - final) * (1 - t / end) ** 3


def uniform_counts(weights: list[torch.Tensor], sparsity: float) -> list[int]:
    """Weights kept per layer at one sparsity in every layer (at least one, so no layer is cut)."""
    return [max(1, round((1 - sparsity) * w.numel())) for w in weights]


def gradual_prune(vanilla: dict, cfg: GradualConfig, progress: Callable[[int, int], None] | None = None) -> TrainResult:
    """Fine-tune `vanilla` for cfg.steps steps of its own recipe, pruning every layer by magnitude
    to the cubic schedule's sparsity at each of cfg.n_prunes events (the last at prune_fraction x
    steps), pruned weights held at zero from their event on. Returns a "gmp" checkpoint."""
    if vanilla.get("regime") != "vanilla":
        raise ValueError(f"the model to prune must be a vanilla one, got regime {vanilla.get('regime')!r}")
    if not 0 <= cfg.sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {cfg.sparsity}")
    if cfg.steps < 1:
        raise ValueError(f"steps must be a positive integer, got {cfg.steps}")
    end = max(1, int(cfg.prune_fraction * cfg.steps))
    every = max(1, end // cfg.n_prunes)

    def prune_at(step: int, model) -> list[torch.Tensor] | None:
        t = step + 1
        if t > end or (t % every and t != end):
            return None
        weights = [linear.weight.detach() for linear in model.linears]
        return magnitude_masks(weights, uniform_counts(weights, cubic_sparsity(t, end, cfg.sparsity)))

    config = config_of(vanilla, steps=cfg.steps, log_every=cfg.log_every, device=cfg.device)
    result = train(config, progress, start=vanilla, prune_at=prune_at)
    ckpt = result.checkpoint
    ckpt["regime"] = "gmp"
    ckpt["config"] = {**ckpt["config"], "regime": "gmp", "sparsity": cfg.sparsity, "prune_end": end,
                      "prune_every": every, "vanilla_steps": vanilla["config"]["steps"]}
    total = sum(int(w.numel()) for w in ckpt["weights"])
    nonzero = sum(int((w != 0).sum()) for w in ckpt["weights"])
    result.metrics.update({"weights_nonzero": nonzero, "weights_total": total, "sparsity": 1 - nonzero / total})
    return result
