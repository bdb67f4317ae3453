"""What a transformer task carries beyond an MLP task's: the model it trains (TransformerConfig,
read by workers.transformer), the positions its loss and metrics score, and what is known about
its circuit. Here, in tasks/, because a task names its model and imports run orchestrator ->
workers -> tasks; workers.transformer re-exports TransformerConfig."""
from __future__ import annotations

from dataclasses import dataclass, field

ACTIVATIONS = ("gelu", "gelu_new", "relu")  # gelu_new: the tanh approximation (TransformerLens's name)


@dataclass(frozen=True)
class TransformerConfig:
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int  # 0 = attention-only
    n_ctx: int  # max sequence length
    d_vocab: int  # token input vocabulary; 0 = linear input map (real-valued tokens)
    d_input: int  # features per real-valued token (used when d_vocab == 0), else 0
    d_output: int  # outputs per position (vocabulary logits, or regression dims)
    activation: str = "gelu"  # "gelu" | "gelu_new" | "relu"
    layer_norm: bool = False  # pre-LN blocks + final LN when True
    positional: bool = True  # learned positional embedding W_pos
    causal: bool = True  # False: every position attends to every position (tracr's compiled models)

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if (self.d_vocab > 0) == (self.d_input > 0):
            raise ValueError("set exactly one of d_vocab (token inputs) and d_input (real-valued inputs)")
        for name in ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_output"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def d_in(self) -> int:
        """Neurons of the input layer: the vocabulary, or the real-valued features."""
        return self.d_vocab or self.d_input


@dataclass(frozen=True)
class CircuitTruth:
    """What is known about a transformer task's circuit, in EAP-IG's node names (`input`,
    `a{L}.h{H}`, `m{L}`, `logits`; a head's inputs `a{L}.h{H}<q>`, `<k>`, `<v>`).

    `nodes`/`edges`: the components and edges the mechanism uses, where they are fixed (tracr's
    compiled programs). `roles`: where the mechanism is known only up to which head plays a role
    (induction: any head of layer 0 may become the previous-token head), role -> layer; the task
    module gives the score that finds the head (e.g. tasks.induction.head_scores)."""

    mechanism: str
    nodes: frozenset[str] = frozenset()
    edges: frozenset[tuple[str, str]] = frozenset()
    roles: dict[str, int] = field(default_factory=dict)
