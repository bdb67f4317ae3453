"""The words and defaults every layer shares: regimes, discovery methods, ablations, ACDC's sender
orders, the settings a task's recipe fills in, and the network's shape and edge count.

One source, because a copy that drifts breaks resume silently (a job id hashes these words) and
lets the CLI, the spec and the workers accept different things. This module imports neither torch
nor anything else of the project, so the spec (orchestrator.spec) and the CLI can read it cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Regime:
    """What a training regime adds to plain training (workers.train's module doc)."""

    penalty: bool  # the connection cost, lam * cost
    local: bool  # the cost weighs wire length (else plain L1)
    swaps: bool  # neuron swaps every swap_every steps


# The regimes workers.train trains from scratch
TRAINED_REGIMES: dict[str, Regime] = {
    "vanilla": Regime(penalty=False, local=False, swaps=False),
    "l1": Regime(penalty=True, local=False, swaps=False),
    "local": Regime(penalty=True, local=True, swaps=False),
    "swap": Regime(penalty=True, local=False, swaps=True),
    "bimt": Regime(penalty=True, local=True, swaps=True),
}
# "prune" (workers.prune) is derived from two trained models: the PRUNE_FROM model of a task, seed
# and steps, pruned to the weight count of the PRUNE_MATCH model of the same point
PRUNE_FROM, PRUNE_MATCH = "vanilla", "bimt"
REGIMES: tuple[str, ...] = (*TRAINED_REGIMES, "prune")  # also the report's row order
BASELINE_REGIME = "vanilla"

# The train settings that reshape a transformer task's model (tasks.sequence.TransformerConfig's
# fields of the same names; None: the task's). Part of a job id only when set, so MLP ids stay.
TRANSFORMER_SHAPE = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp")

# The train settings a task's recipe (tasks.recipe) fills in when a spec or the CLI leaves them out
RECIPE_DEFAULTS = ("lam", "lr", "swap_every", "top_k", "final_factor")
# ... and those only a penalty reads: a vanilla model is the same whatever they say
PENALTY_ONLY = ("lam", "swap_every", "top_k", "final_factor")
DEFAULT_LOG_EVERY = 100  # training steps between logged losses
# training steps between a sweep's checkpoints within a job (orchestrator.checkpoints): a 20k-step
# job keeps 3, a test's few hundred steps none
DEFAULT_CHECKPOINT_EVERY = 5000
DEFAULT_MATCH_FRACTION = 1e-2  # prune: count the matched model's weights with |w| > this x max|w|

# Discovery examples per half where the task's generator draws them (workers.discover), and what a
# discover job's id records of them (orchestrator.spec): a circuit found on fresh examples is
# another result than one found on the test split, so its id differs from the older one's.
FRESH_PER_HALF = 1000
FRESH_EXAMPLES_ID = f"generator-{FRESH_PER_HALF}"

METHODS: tuple[str, ...] = ("acdc", "exact", "eap", "eap-ig")
SCORE_METHODS: tuple[str, ...] = ("exact", "eap", "eap-ig")  # score every edge, then select
ATTRIBUTION_METHODS: tuple[str, ...] = ("eap", "eap-ig")  # gradient scores (workers.attribution)
ABLATIONS: tuple[str, ...] = ("resample", "zero", "mean")
DEFAULT_ABLATION = "resample"
# The MLP circuit metrics (workers.graph.Metric): a task's own is mse or kl; logit_diff (classifiers)
# is asked for by name, and a discovery that leaves the metric out uses the task's
CIRCUIT_METRICS: tuple[str, ...] = ("mse", "kl", "logit_diff")
ORDERS: tuple[str, ...] = ("ascending", "descending", "random")  # ACDC's sender order
DEFAULT_ORDER = "ascending"  # the ACDC definition's (docs/design.md)


def resolved_swap_every(regime: str, steps: int, swap_every: int | None, recipe) -> int:
    """A run's swap interval: the one given, else the task's recipe's scaled to the run's steps
    (tasks.recipe.Recipe.swap_every_for) where the regime swaps, or is matched to one that does
    (prune, to bimt); the other regimes never swap and keep the recipe's figure, so their job ids
    stay what they were before the interval scaled."""
    if swap_every is not None:
        return swap_every
    swaps = TRAINED_REGIMES[regime].swaps if regime in TRAINED_REGIMES else TRAINED_REGIMES[PRUNE_MATCH].swaps
    return recipe.swap_every_for(steps) if swaps else recipe.swap_every


def network_shape(task_shape, width: int | None = None) -> list[int]:
    """Neurons per layer, inputs first: the task's shape with every hidden layer `width` wide
    when a width is given."""
    shape = list(task_shape)
    if width is not None:
        shape[1:-1] = [width] * (len(shape) - 2)
    return shape


def edge_count(shape) -> int:
    """Edges of the dense neuron graph of a network of this shape (one per weight)."""
    return sum(a * b for a, b in zip(shape, shape[1:]))


# Interpolated receivers (workers.acdc.interpolant.Interpolant): the Chebyshev node counts tried in turn, and
# the fewest candidates for which a receiver whose rows pass a hidden layer is interpolated. Here,
# not in workers.acdc, because workers.chunks prices such receivers by them without torch.
CHEB_NODES: tuple[int, ...] = (17, 33, 65, 129)
CHEB_MIN_CANDIDATES = 2 * CHEB_NODES[0]
