"""What a discovery is asked to do, typed (beside workers.train.TrainConfig): the method, how it
selects edges, the ablation, the output and the seed. The CLI builds one from its options, the
orchestrator from a discover job's settings (`from_settings`), and workers.discover runs it.
Light on purpose (no torch): the driver builds these while it reads a spec."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from circuitry.workers.names import ABLATIONS, CIRCUIT_METRICS, DEFAULT_ABLATION, DEFAULT_ORDER, METHODS, ORDERS


class DiscoveryInputError(ValueError):
    """Bad discovery input; `option` names the CLI option that carries it."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class DiscoverConfig:
    method: str  # workers.names.METHODS
    threshold: float | None = None  # acdc: tau; score methods: keep |score| >= threshold
    top_k: int | None = None  # score methods: the k largest |score|
    edge_fraction: float | None = None  # score methods: the largest |score|, this fraction of the edges
    target_f: float | None = None  # the circuit at this faithfulness instead (workers.target)
    order: str = DEFAULT_ORDER  # acdc's sender order (workers.acdc.sender_orders)
    ablation: str = DEFAULT_ABLATION  # workers.names.ABLATIONS
    output: int | None = None  # the circuit of this output alone (None: of all of them)
    seed: int = 0  # the corruption pairing's seed
    device: str = "auto"  # where the method runs ("auto": the GPU when torch sees one)
    metric: str | None = None  # the circuit metric (workers.graph.Metric); None: the task's (mse or kl)

    @classmethod
    def from_settings(cls, settings: dict, **overrides) -> DiscoverConfig:
        """The config a discover job's settings name (they also hold the task, regime and
        train_seed of the model it reads, which are not the discovery's)."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in settings.items() if k in names}, **overrides})

    def as_dict(self) -> dict:
        return asdict(self)

    def check(self) -> DiscoverConfig:
        """Raise DiscoveryInputError (naming the CLI option) unless exactly one way of selecting
        edges is given, and one the method has."""
        method, threshold, top_k, edge_fraction, target_f = (self.method, self.threshold, self.top_k,
                                                             self.edge_fraction, self.target_f)
        if method not in METHODS:
            raise DiscoveryInputError("--method", f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
        if self.ablation not in ABLATIONS:
            raise DiscoveryInputError("--ablation", f"unknown ablation {self.ablation!r}: choose one of "
                                      f"{', '.join(ABLATIONS)}")
        if self.metric is not None and self.metric not in CIRCUIT_METRICS:
            raise DiscoveryInputError("--metric", f"unknown metric {self.metric!r}: choose one of "
                                      f"{', '.join(CIRCUIT_METRICS)}")
        if target_f is not None and not (math.isfinite(target_f) and 0 < target_f <= 1):
            raise DiscoveryInputError("--target-f", f"target faithfulness must be in (0, 1], got {target_f}")
        if self.order not in ORDERS:
            raise DiscoveryInputError("--order", f"unknown order {self.order!r}: choose one of {', '.join(ORDERS)}")
        if self.order != "ascending" and method != "acdc":
            raise DiscoveryInputError("--order", f"the sender order is acdc's; {method} has none: drop --order")
        if threshold is not None and (not math.isfinite(threshold) or threshold < 0):
            raise DiscoveryInputError("--threshold", f"threshold must be a finite number >= 0, got {threshold}")
        if top_k is not None and top_k < 0:
            raise DiscoveryInputError("--top-k", f"top-k must be >= 0, got {top_k}")
        if edge_fraction is not None and not 0 <= edge_fraction <= 1:
            raise DiscoveryInputError("--edge-fraction", f"edge fraction must be in [0, 1], got {edge_fraction}")
        if method == "acdc":
            if top_k is not None or edge_fraction is not None:
                raise DiscoveryInputError("--top-k", "acdc selects edges by --threshold or --target-f only; "
                                          "drop --top-k/--edge-fraction")
            if (threshold is None) == (target_f is None):
                raise DiscoveryInputError("--threshold", "acdc needs exactly one of --threshold tau (e.g. 0.01) and "
                                          "--target-f F (e.g. 0.95)")
        elif sum(x is not None for x in (threshold, top_k, edge_fraction, target_f)) != 1:
            raise DiscoveryInputError("--threshold", f"{method} needs exactly one of --threshold, --top-k, "
                                      "--edge-fraction, --target-f")
        return self
