"""How BIMT's authors trained a task: one value object per task, read by workers.train.

The reference is the notebooks of KindXiaoming/BIMT (symbolic_formulas_3.1, two_moon_3.2,
modular_addition_3.3, mnist_3.5). They differ per task in more than lam: the connection cost's
normalisation, l0 and the weight of the wire length, when biases start to be penalised, the lam
schedule, the layout and distance metric, which layers swap, minibatches, the loss and the float
type. docs/bimt_reference.md lists every setting with the notebook cell it comes from; a task
without a notebook (digits, planted_teacher) says whose choices it borrows.

The cost a regime penalises (workers.train): for linear layer l with weights W_l, wire lengths D_l,

    cost = sum_l  agg( |W_l| * (distance_weight * D_l + l0) )  +  agg(|b_l|) * l0  +  agg(|E|) * l0

with agg = sum or mean over the layer's entries (`cost_norm`), D_l = 0 for the last layer when
`last_layer_distance` is False, the bias term only from `bias_from` * steps on, and distance_weight
0 in the non-local regimes (l1, swap).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

LOSSES = ("task", "mse_onehot")  # "task": the task's own loss (MSE / cross-entropy)
COST_NORMS = ("sum", "mean")
DISTANCES = ("euclidean", "manhattan")
OUTPUT_LAYOUTS = ("row", "ring")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Recipe:
    # optimisation
    steps: int = 20000
    lr: float = 2e-3  # AdamW, weight decay 0
    batch_size: int | None = None  # None: full batch; else shuffled minibatches, reshuffled each epoch
    loss: str = "task"
    dtype: str = "float32"  # what training runs in; checkpoints are stored in float32
    # the connection cost and its schedule
    lam: float = 1e-3
    # (start as a fraction of steps, multiplier of lam) for each phase; the reference's
    # `lamb *= 10` at steps/4 and `lamb *= 0.1` at 3 steps/4 is ((0, 1), (0.25, 10), (0.75, 1))
    lam_phases: tuple[tuple[float, float], ...] = ((0.0, 1.0), (0.25, 10.0), (0.75, 1.0))
    bias_from: float = 0.75  # biases are penalised from this fraction of the steps on
    cost_norm: str = "sum"
    l0: float = 0.1  # distance between adjacent layers
    distance_weight: float = 1.0  # the reference's weight_factor in the local regimes
    last_layer_distance: bool = True  # False: no wire-length term on the last layer (MNIST)
    # layout and swaps
    distance: str = "euclidean"  # wire length on 2-D sheets (1-D lines: |dx| either way)
    output_layout: str = "row"  # 2-D sheets only: outputs in a row, or on a ring (MNIST)
    in_fold: int = 1  # input neurons per position: 2 puts token a's and token b's dim i together
    swap_inputs: bool = True
    swap_every: int = 200  # at the reference's `steps`; a run of other length scales it (swap_every_for)
    top_k: int = 5  # neurons relocated per layer per swap round

    def __post_init__(self):
        for name, value, allowed in [("loss", self.loss, LOSSES), ("cost_norm", self.cost_norm, COST_NORMS),
                                     ("distance", self.distance, DISTANCES),
                                     ("output_layout", self.output_layout, OUTPUT_LAYOUTS),
                                     ("dtype", self.dtype, DTYPES)]:
            if value not in allowed:
                raise ValueError(f"recipe {name}: {value!r} is not one of {', '.join(allowed)}")
        starts = [s for s, _ in self.lam_phases]
        if not starts or starts[0] != 0.0 or starts != sorted(starts):
            raise ValueError(f"recipe lam_phases: {self.lam_phases!r} must start at 0.0 and be ordered")

    def lam_at(self, step: int, steps: int) -> float:
        """lam at a step: the multiplier of the last phase that has started (int(fraction * steps),
        as the reference's `step == int(steps/4)`)."""
        factor = self.lam_phases[0][1]
        for start, multiplier in self.lam_phases:
            if step >= int(start * steps):
                factor = multiplier
        return self.lam * factor

    def penalize_bias_at(self, step: int, steps: int) -> bool:
        return step >= int(self.bias_from * steps)

    def swap_every_for(self, steps: int) -> int:
        """The swap interval of a run of `steps` steps: the reference's interval scaled by steps over
        the reference's steps (at least 1), so a shortened run keeps the reference's number of swap
        rounds (digits at 2,000 steps swaps every 50 steps, 40 rounds, as at 20,000 every 500). An
        unscaled interval left a shortened run a tenth of the reference's swaps (issue 29)."""
        return max(1, round(self.swap_every * steps / self.steps))

    def with_final_factor(self, final_factor: float) -> "Recipe":
        """The same schedule with the last phase's multiplier replaced (`--final-factor`)."""
        *head, (start, _) = self.lam_phases
        return replace(self, lam_phases=(*head, (start, float(final_factor))))

    @property
    def final_factor(self) -> float:
        return self.lam_phases[-1][1]


# The symbolic formulas notebook (symbolic_formulas_3.1.ipynb, cells 3 and 5): the defaults above.
SYMBOLIC = Recipe()
