"""Circuit discovery on a `circuitry.mlp/1` checkpoint: the entry point the orchestrator calls.

    d = discover(ckpt, "acdc", 0.01)            # or any of workers.names.METHODS
    write_discovery(d, out_dir, ckpt)           # circuit.parquet, summary.json, circuit.png

The examples (design.md, "The examples a discovery runs on"): the test split of the model's own
data seed (its training seed, from the checkpoint's config), in the order the task generates it;
the first half are the discovery examples (the method sees only these; mean ablation and EAP-IG's
mean input average over them), the second half the evaluation examples, on which every circuit
is graded again (summary.json's `evaluation`). Each half holds at most MAX_EXAMPLES_PER_HALF
examples (MNIST's 10,000 test images; summary.json's `examples_cap_per_half` says when it bit).
Each half's corrupted inputs pair examples within that half (task.corrupt with the discover
seed, which chooses nothing else). `--data` examples are split into the same two halves.

Methods and score semantics (design.md; the `score` column of circuit.parquet):
- `acdc`: the metric increase measured when the edge was tried; the edge is removed when that
  increase is < tau (workers.acdc, exactly the sequential definition).
- `exact`: metric(full model with only this edge ablated) - metric(full model); metric(full) = 0.
- `eap`, `eap-ig`: the attribution estimate of the change ablating the edge makes to the linear
  restoration metric r, r(full) = 1, r(empty circuit) = 0 (workers.attribution); signed.
Score methods keep edges by tau (|score| >= tau), by top-k or by edge fraction (largest |score|,
ties to the earlier canonical edge).

Circuits at a target faithfulness (`target_f`, workers.target): acdc searches tau for the largest
tau whose circuit reaches f >= target_f on the discovery examples (a local bracket tau_found <
tau_above, ratio <= 1.2; each probe an exact ACDC run) and writes the circuit at tau_found; score
methods take the smallest top-k that reaches it. summary.json: `target_f`, `tau_found`,
`tau_above` (null where not applicable), `target_reached`, and `search`, every probe tried
((tau or k), f, edges). The discovery cost figures (`discovery_seconds`, `forward_examples`,
`edges_tested`) are the whole search's.

ACDC's sender order (`order`: ascending, the definition's default, descending, or random, a
permutation per receiver drawn from the discover seed; workers.acdc.sender_orders) is a free
choice of the definition; it is in summary.json and the circuit's metadata (score methods have
no order: always "ascending" there). The metric is MSE to the full model's output (regression) or
KL(full || circuit) (classification), optionally restricted to one output (`output`).

Discovery cost that does not depend on the implementation: `edges_tested`, the candidate edges
the method's definition evaluates: for acdc those into receivers that still reach the metric's
outputs when they are visited, for exact every edge, none (null) for the attribution methods
(their cost is `forward_examples`).

Edge order everywhere (table rows, `exact_scores` slices, flat score arrays): weight matrix l, then
dst position, then src position (workers.graph).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from circuitry.tasks import get_task
from circuitry.tasks.base import live_edges
from circuitry.workers import acdc as acdc_mod
from circuitry.workers import evaluate as ev
from circuitry.workers.attribution import attribution_scores
from circuitry.workers.target import Probe, Search, search_top_k, search_tau
from circuitry.workers.device import pick_device
from circuitry.workers.graph import Graph, Problem
from circuitry.workers.names import ABLATIONS, METHODS, ORDERS, SCORE_METHODS
from circuitry.workers.outputs import json_bytes, png_bytes, write_files
from circuitry.workers.profile import PeakMemory

# The most examples in each half (discovery, evaluation) of a task's test split: MNIST's 10,000
# test images give 1,000 + 1,000, every other task's split is smaller than 2,000 and used whole.
MAX_EXAMPLES_PER_HALF = 1000


class DiscoveryInputError(ValueError):
    """Bad discovery input; `option` names the CLI option that carries it."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


@dataclass
class Discovery:
    table: pa.Table  # circuit.parquet, schema metadata included
    summary: dict  # summary.json
    masks: list[torch.Tensor]  # bool, one per weight matrix, True = in circuit
    scores: list[torch.Tensor] = field(default_factory=list)  # float64, shapes of the weights
    config: dict = field(default_factory=dict)  # method, threshold, ablation, metric, ...


@dataclass
class Prepared:
    task: object
    graph: Graph
    problem: Problem  # on the discovery examples
    clean_x: torch.Tensor  # the discovery examples' clean inputs
    labels_pos: torch.Tensor | None  # labels in position order / as class positions
    evaluation: Problem  # the evaluation examples, ablated as the discovery examples define it
    eval_labels_pos: torch.Tensor | None
    examples: dict  # data_seed, n_discovery, n_evaluation, where they came from (summary.json)


# ---------------------------------------------------------------- input checks and preparation

def check_task(ckpt: dict):
    try:
        task = get_task(ckpt["task"])
    except ValueError as e:
        raise DiscoveryInputError("--model", f"{e}; the checkpoint's task must be a registered task") from None
    shape = list(ckpt["shape"])
    if shape[0] != task.shape[0] or shape[-1] != task.shape[-1]:
        raise DiscoveryInputError(
            "--model", f"checkpoint shape {shape} does not fit task {task.name!r} "
            f"({task.shape[0]} inputs, {task.shape[-1]} outputs); use a model trained on that task")
    if (task.vocab is not None) != ("embedding" in ckpt and ckpt["embedding"] is not None):
        raise DiscoveryInputError("--model", f"task {task.name!r} and the checkpoint disagree on token embeddings")
    return task


def _check_data(task, data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(data, dict) or "clean" not in data or "corrupt" not in data:
        raise DiscoveryInputError("--data", "expected a dict with tensors 'clean', 'corrupt' and optionally 'labels'")
    clean, corrupt, labels = data["clean"], data["corrupt"], data.get("labels")
    if not isinstance(clean, torch.Tensor) or not isinstance(corrupt, torch.Tensor):
        raise DiscoveryInputError("--data", "'clean' and 'corrupt' must be tensors")
    n_cols = task.shape[0] // task.embed_dim if task.vocab is not None else task.shape[0]
    if clean.dim() != 2 or clean.shape[1] != n_cols or clean.shape[0] < 1:
        raise DiscoveryInputError("--data", f"'clean' must be [N, {n_cols}] for task {task.name!r}, got {list(clean.shape)}")
    if corrupt.shape != clean.shape:
        raise DiscoveryInputError("--data", f"'corrupt' must have the shape of 'clean' {list(clean.shape)}, got {list(corrupt.shape)}")
    for name, t in (("clean", clean), ("corrupt", corrupt)):
        if task.vocab is not None:
            if t.is_floating_point() or t.min() < 0 or t.max() >= task.vocab:
                raise DiscoveryInputError("--data", f"'{name}' must hold token ids in [0, {task.vocab})")
        elif not torch.isfinite(t.double()).all():
            raise DiscoveryInputError("--data", f"'{name}' has non-finite values")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape[0] != clean.shape[0]:
            raise DiscoveryInputError("--data", "'labels' must be a tensor with one row per example")
        if task.kind == "classification":
            if labels.is_floating_point() or labels.dim() != 1 or labels.min() < 0 or labels.max() >= task.shape[-1]:
                raise DiscoveryInputError("--data", f"'labels' must be class ids [N] in [0, {task.shape[-1]})")
        else:
            labels = labels.reshape(labels.shape[0], -1)
            if labels.shape[1] != task.shape[-1]:
                raise DiscoveryInputError("--data", f"'labels' must be [N, {task.shape[-1]}] for task {task.name!r}")
    return clean, corrupt, labels


def data_seed(ckpt: dict) -> int:
    """The seed the model's data was drawn with: its training seed (the checkpoint's config)."""
    config = ckpt.get("config") or {}
    return int(config.get("seed", ckpt.get("seed", 0)))


def split_examples(task, ckpt: dict, data: dict | None, seed: int) -> tuple[tuple, tuple, dict]:
    """(clean, corrupt, labels) of the discovery and of the evaluation examples, and what
    summary.json says about them (module doc)."""
    if data is None:
        split = task.make_data(data_seed(ckpt))
        x, y = split.x_test, split.y_test
        half = len(x) // 2
        halves = [(x[:half], y[:half]), (x[half:], y[half:])]
        capped = any(len(c) > MAX_EXAMPLES_PER_HALF for c, _ in halves)
        halves = [(c[:MAX_EXAMPLES_PER_HALF], l[:MAX_EXAMPLES_PER_HALF]) for c, l in halves]
        parts = [(c, task.corrupt(c, seed), l) for c, l in halves]
        info = {"data_seed": data_seed(ckpt), "examples_from": "test split", "n_test_split": len(x),
                "examples_cap_per_half": MAX_EXAMPLES_PER_HALF if capped else None}
    else:
        clean, corrupt, labels = _check_data(task, data)
        if clean.shape[0] < 2:
            raise DiscoveryInputError("--data", "'clean' needs at least 2 examples: the first half finds the "
                                      "circuit, the second half grades it")
        half = clean.shape[0] // 2
        cut = lambda t: (None, None) if t is None else (t[:half], t[half:])  # noqa: E731
        (c0, c1), (k0, k1), (l0, l1) = cut(clean), cut(corrupt), cut(labels)
        parts = [(c0, k0, l0), (c1, k1, l1)]
        info = {"data_seed": None, "examples_from": "--data", "n_test_split": None, "examples_cap_per_half": None}
    info.update(n_discovery=int(parts[0][0].shape[0]), n_evaluation=int(parts[1][0].shape[0]))
    return parts[0], parts[1], info


def _labels_pos(task, graph: Graph, labels):
    if labels is None:
        return None
    if task.kind == "classification":
        return torch.argsort(graph.out_perm)[labels.long()]
    return labels.reshape(labels.shape[0], -1).to(torch.float64)[:, graph.out_perm]


def evaluation_problem(discovery: Problem, clean, corrupt, output: int | None) -> Problem:
    """The problem on held-out examples: their own clean and corrupted activations, but mean
    ablation feeds the discovery examples' means (the circuit's ablation is fixed by them)."""
    p = Problem.build(discovery.graph, clean, corrupt, discovery.kind, discovery.ablation, output)
    if discovery.ablation == "mean":
        n = p.n_examples
        p = replace(p, ablated=[a[:1].expand(n, -1).clone() for a in discovery.ablated])
    return p


def _discovery(ckpt: dict, ablation: str, output: int | None, data: dict | None, seed: int):
    """The checked task, the graph, the discovery examples' problem, both halves of the examples
    and what summary.json says of them (`split_examples`)."""
    if ablation not in ABLATIONS:
        raise DiscoveryInputError("--ablation", f"unknown ablation {ablation!r}: choose one of {', '.join(ABLATIONS)}")
    task = check_task(ckpt)
    if output is not None and not 0 <= output < task.shape[-1]:
        raise DiscoveryInputError("--output", f"output {output} out of range: the model has outputs 0..{task.shape[-1] - 1}")
    discovery, evaluation, info = split_examples(task, ckpt, data, seed)
    graph = Graph.from_checkpoint(ckpt)
    problem = Problem.build(graph, discovery[0], discovery[1], task.metric, ablation, output)
    return task, graph, problem, discovery, evaluation, info


def prepare(ckpt: dict, *, ablation: str = "resample", output: int | None = None,
            data: dict | None = None, seed: int = 0) -> Prepared:
    """The graph, the discovery and evaluation examples (module doc) and the metric."""
    task, graph, problem, (clean, _, labels), (e_clean, e_corrupt, e_labels), info = _discovery(
        ckpt, ablation, output, data, seed)
    evaluation = evaluation_problem(problem, e_clean, e_corrupt, output)
    return Prepared(task, graph, problem, clean, _labels_pos(task, graph, labels), evaluation,
                    _labels_pos(task, graph, e_labels), info)


def discovery_problem(ckpt: dict, *, ablation: str = "resample", output: int | None = None,
                      seed: int = 0) -> Problem:
    """`prepare(...).problem` alone, the evaluation examples' activations not computed: what each
    chunk of a fanned-out `exact` job scores against (they are half of `prepare`'s time)."""
    return _discovery(ckpt, ablation, output, None, seed)[2]


def _check_selection(method, threshold, top_k, edge_fraction, target_f=None, order="ascending"):
    if method not in METHODS:
        raise DiscoveryInputError("--method", f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if target_f is not None and not (math.isfinite(target_f) and 0 < target_f <= 1):
        raise DiscoveryInputError("--target-f", f"target faithfulness must be in (0, 1], got {target_f}")
    if order not in ORDERS:
        raise DiscoveryInputError("--order", f"unknown order {order!r}: choose one of {', '.join(ORDERS)}")
    if order != "ascending" and method != "acdc":
        raise DiscoveryInputError("--order", f"the sender order is acdc's; {method} has none: drop --order")
    if threshold is not None and (not math.isfinite(threshold) or threshold < 0):
        raise DiscoveryInputError("--threshold", f"threshold must be a finite number >= 0, got {threshold}")
    if top_k is not None and top_k < 0:
        raise DiscoveryInputError("--top-k", f"top-k must be >= 0, got {top_k}")
    if edge_fraction is not None and not 0 <= edge_fraction <= 1:
        raise DiscoveryInputError("--edge-fraction", f"edge fraction must be in [0, 1], got {edge_fraction}")
    if method == "acdc":
        if top_k is not None or edge_fraction is not None:
            raise DiscoveryInputError("--top-k", "acdc selects edges by --threshold or --target-f only; drop --top-k/--edge-fraction")
        if (threshold is None) == (target_f is None):
            raise DiscoveryInputError("--threshold", "acdc needs exactly one of --threshold tau (e.g. 0.01) and "
                                      "--target-f F (e.g. 0.95)")
    else:
        given = [x is not None for x in (threshold, top_k, edge_fraction, target_f)]
        if sum(given) != 1:
            raise DiscoveryInputError("--threshold", f"{method} needs exactly one of --threshold, --top-k, "
                                      "--edge-fraction, --target-f")


# ---------------------------------------------------------------- the entry points

def discover(ckpt: dict, method: str, threshold: float | None = None, *, ablation: str = "resample",
             output: int | None = None, data: dict | None = None, seed: int = 0,
             top_k: int | None = None, edge_fraction: float | None = None, target_f: float | None = None,
             order: str = "ascending", progress: Callable[[int], None] | None = None,
             device: str = "auto") -> Discovery:
    """Find the circuit of `ckpt` with `method` (module doc); `progress(n)` is called with the
    number of edges just evaluated. Deterministic for the same inputs. The method runs on
    `device` ("auto": the GPU when torch sees one); its results and the grading are on the CPU.
    `target_f`: the circuit at that faithfulness instead of at a threshold (module doc)."""
    _check_selection(method, threshold, top_k, edge_fraction, target_f, order)
    dev = pick_device(device)
    t0 = time.perf_counter()
    search, ranking = None, None
    with PeakMemory(dev) as mem:
        prep = prepare(ckpt, ablation=ablation, output=output, data=data, seed=seed)
        problem = prep.problem.to(dev)
        masks, tested = None, None
        if method == "acdc" and target_f is not None:
            search, spent, tested = acdc_at_target(prep, problem, target_f, order, seed, progress)
            res, threshold = search.result, search.found
            scores, masks = ev.flatten(res.scores), res.masks
        elif method == "acdc":
            res = acdc_mod.acdc(problem, threshold, progress=progress, order=order, seed=seed)
            scores, masks, spent, tested = ev.flatten(res.scores), res.masks, res.forward_examples, res.edges_tested
        elif method == "exact":
            scores, spent = acdc_mod.exact_scores(problem, progress=progress)
            tested = prep.graph.n_edges
        else:
            per_layer, spent = attribution_scores(problem, method)
            scores = ev.flatten([s.cpu() for s in per_layer])
            if progress:
                progress(prep.graph.n_edges)
        if method != "acdc" and target_f is not None:
            ranking = ev.edge_ranking(scores)
            search, top_k = top_k_at_target(prep, scores, target_f, ranking)
    seconds = time.perf_counter() - t0
    d = _assemble(ckpt, prep, method, scores, masks, threshold=threshold, top_k=top_k,
                  edge_fraction=edge_fraction, seconds=seconds, forward_examples=spent,
                  edges_tested=tested, ablation=ablation, output=output, seed=seed,
                  target_f=target_f, order=order, search=search, ranking=ranking)
    d.summary["device"] = str(dev)
    # the discovery's own high-water mark (workers.profile: reset at the start on CPU)
    d.summary["peak_memory_bytes"] = mem.peak_bytes
    d.summary["peak_memory_delta_bytes"] = mem.delta_bytes
    return d


def _discovery_f(prep: Prepared, masks) -> float:
    """f on the discovery examples, computed as summary.json's `faithfulness` is (on the CPU)."""
    return ev.faithfulness(prep.problem, masks)["faithfulness"]


def acdc_at_target(prep: Prepared, problem: Problem, target_f: float, order: str = "ascending", seed: int = 0,
                   progress: Callable[[int], None] | None = None) -> tuple[Search, int, int]:
    """ACDC at the largest tau (a local bracket) whose circuit reaches f >= target_f on the
    discovery examples (workers.target.search_tau, started on the scale of metric_empty); returns
    the search (its `result` the EdgeResult at tau_found) and the whole search's example-forwards
    and edges tested. `problem` is the discovery problem on the device ACDC runs on."""
    cost = {"spent": 0, "tested": 0}

    def probe(tau: float) -> Probe:
        res = acdc_mod.acdc(problem, tau, progress=progress, order=order, seed=seed)
        cost["spent"] += res.forward_examples + prep.problem.n_examples  # + the grading forward
        cost["tested"] += res.edges_tested or 0
        return Probe(_discovery_f(prep, res.masks), int(sum(int(m.sum()) for m in res.masks)), res)

    defined = not math.isnan(_discovery_f(prep, prep.graph.full_masks()))  # f's denominator is the same for every circuit
    search = search_tau(probe, target_f, prep.problem.empty_metric, prep.graph.n_edges, defined=defined)
    return search, cost["spent"], cost["tested"]


def top_k_at_target(prep: Prepared, flat_scores: torch.Tensor, target_f: float,
                    ranking: torch.Tensor) -> tuple[Search, int]:
    """The smallest top-k (largest |score|) whose circuit reaches f >= target_f on the discovery
    examples (workers.target.search_top_k); returns the search and k. `ranking`:
    `ev.edge_ranking(flat_scores)` (the caller grades on it too)."""

    def probe(k: int) -> Probe:
        return Probe(_discovery_f(prep, ev.top_k_masks(prep.graph, flat_scores, k, ranking)), k)

    search = search_top_k(probe, target_f, prep.graph.n_edges)
    return search, int(search.found)


def exact_scores(ckpt: dict, *, ablation: str = "resample", output: int | None = None,
                 data: dict | None = None, seed: int = 0, start: int = 0, stop: int | None = None,
                 progress: Callable[[int], None] | None = None, device: str = "auto") -> np.ndarray:
    """`exact` scores of edges [start, stop) of the canonical order (float64), computed on
    `device` (as `discover`). Chunks of any size concatenate to exactly the one-pass result (bit
    for bit) on one device; across devices they agree to float64 rounding."""
    prep = prepare(ckpt, ablation=ablation, output=output, data=data, seed=seed)
    scores, _ = acdc_mod.exact_scores(prep.problem.to(pick_device(device)), start, stop, progress=progress)
    return scores.numpy()


def n_edges(ckpt: dict) -> int:
    """Length of the canonical edge list (what the orchestrator splits into chunks)."""
    return sum(int(w.numel()) for w in ckpt["weights"])


def discovery_from_scores(ckpt: dict, scores, *, method: str = "exact", threshold: float | None = None,
                          ablation: str = "resample", output: int | None = None, data: dict | None = None,
                          seed: int = 0, top_k: int | None = None, edge_fraction: float | None = None,
                          target_f: float | None = None, seconds: float = float("nan"),
                          forward_examples: int | None = None) -> Discovery:
    """A Discovery from precomputed score-method scores (e.g. concatenated `exact_scores` chunks):
    the same files a one-pass `discover` would write, up to the timing fields."""
    if method not in SCORE_METHODS:
        raise DiscoveryInputError("--method", f"scores can be assembled for {', '.join(SCORE_METHODS)} only")
    _check_selection(method, threshold, top_k, edge_fraction, target_f)
    prep = prepare(ckpt, ablation=ablation, output=output, data=data, seed=seed)
    flat = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if flat.numel() != prep.graph.n_edges:
        raise ValueError(f"got {flat.numel()} scores for {prep.graph.n_edges} edges")
    if forward_examples is None:
        forward_examples = prep.problem.n_examples * (2 + prep.graph.n_edges)
    search, ranking = None, ev.edge_ranking(flat)
    if target_f is not None:
        search, top_k = top_k_at_target(prep, flat, target_f, ranking)
    return _assemble(ckpt, prep, method, flat, None, threshold=threshold, top_k=top_k,
                     edge_fraction=edge_fraction, seconds=seconds, forward_examples=forward_examples,
                     edges_tested=prep.graph.n_edges if method == "exact" else None,
                     ablation=ablation, output=output, seed=seed, target_f=target_f, search=search,
                     ranking=ranking)


# ---------------------------------------------------------------- EAP-IG-style API on a Graph

def attribute(graph: Graph, clean: torch.Tensor, corrupt: torch.Tensor, *, method: str, metric: str,
              ablation: str = "resample", output: int | None = None,
              threshold: float | None = None, progress: Callable[[int], None] | None = None) -> acdc_mod.EdgeResult:
    """Score (and for acdc, select) every edge of `graph` on these examples (all of them: no
    split). `metric` is "mse" or "kl". Returns per-matrix masks (acdc's circuit; all True for
    score methods) and scores (module doc for semantics)."""
    problem = Problem.build(graph, clean, corrupt, metric, ablation, output)
    if method == "acdc":
        return acdc_mod.acdc(problem, threshold, progress=progress)
    if method == "exact":
        flat, spent = acdc_mod.exact_scores(problem, progress=progress)
        return acdc_mod.EdgeResult(graph.full_masks(), ev.unflatten(graph, flat), spent)
    scores, spent = attribution_scores(problem, method)
    return acdc_mod.EdgeResult(graph.full_masks(), scores, spent)


def evaluate(graph: Graph, masks, clean: torch.Tensor, corrupt: torch.Tensor, *, metric: str,
             ablation: str = "resample", output: int | None = None) -> dict:
    """Faithfulness (metric of the circuit, of the empty circuit, MIB's normalised f) and sparsity."""
    problem = Problem.build(graph, clean, corrupt, metric, ablation, output)
    return {**ev.faithfulness(problem, masks), **ev.sparsity(masks)}


# ---------------------------------------------------------------- selection, grading, table

def select_edges(graph: Graph, flat_scores: torch.Tensor, threshold=None, top_k=None, edge_fraction=None,
                 ranking: torch.Tensor | None = None):
    """Masks of a score method: |score| >= tau, or the top-k / top fraction by |score| (`ranking`:
    `ev.edge_ranking(flat_scores)`, when the caller has it)."""
    if threshold is not None:
        return ev.unflatten(graph, flat_scores.abs() >= threshold)
    k = top_k if top_k is not None else int(round(edge_fraction * graph.n_edges))
    return ev.top_k_masks(graph, flat_scores, min(k, graph.n_edges), ranking)


def model_id(ckpt: dict) -> str:
    """Content id of a checkpoint: sha256 of its shape, permutations, weights and biases."""
    h = hashlib.sha256(json.dumps(list(ckpt["shape"])).encode())
    for t in [ckpt["in_perm"], ckpt["out_perm"], *ckpt["weights"], *ckpt["biases"]]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    if ckpt.get("embedding") is not None:
        h.update(ckpt["embedding"].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def grade(problem: Problem, masks, labels_pos, task, method: str, flat_scores,
          ranking: torch.Tensor | None) -> dict:
    """A circuit's figures on one set of examples: faithfulness, for score methods the
    faithfulness curve (on `ranking`, `ev.edge_ranking(flat_scores)`; None for other methods), for
    classifiers logit gaps and accuracies."""
    out = ev.faithfulness(problem, masks)
    if method in SCORE_METHODS:
        out.update(ev.faithfulness_curve(problem, flat_scores, ranking))
    if task.kind == "classification":
        out.update(ev.classification_figures(problem, masks, labels_pos))
    return out


def _target_figures(method: str, target_f, search: Search | None) -> dict:
    """summary.json's target-faithfulness fields (module doc); null where not applicable."""
    acdc_search = search is not None and method == "acdc"
    return {"target_f": target_f,
            "tau_found": float(search.found) if acdc_search else None,
            "tau_above": float(search.above) if acdc_search and search.above is not None else None,
            "target_reached": None if search is None else bool(search.reached),
            "search": None if search is None else search.record()}


def _assemble(ckpt, prep: Prepared, method, flat_scores, masks, *, threshold, top_k, edge_fraction,
              seconds, forward_examples, edges_tested, ablation, output, seed, target_f=None,
              order="ascending", search: Search | None = None, ranking: torch.Tensor | None = None) -> Discovery:
    graph, problem, task = prep.graph, prep.problem, prep.task
    if method in SCORE_METHODS and ranking is None:
        # sorted once: the selection and both grades' faithfulness curves take top-k of it (a
        # stable sort of a 1M-edge net's scores took 0.13 s on the 2-core VM, 8 of its forwards)
        ranking = ev.edge_ranking(flat_scores)
    if masks is None:
        masks = select_edges(graph, flat_scores, threshold, top_k, edge_fraction, ranking)
    keep = ev.flatten(masks)
    config = {"method": method, "threshold": threshold, "top_k": top_k, "edge_fraction": edge_fraction,
              "target_f": target_f, "order": order,
              "ablation": ablation, "metric": task.metric, "task": task.name,
              "regime": str(ckpt.get("regime", "")), "seed": int(ckpt.get("seed", 0)),
              "discovery_seed": seed, "output": output, "model_id": model_id(ckpt)}
    summary = {**config, **prep.examples, "n_examples": problem.n_examples, **ev.sparsity(masks),
               **grade(problem, masks, prep.labels_pos, task, method, flat_scores, ranking),
               **_target_figures(method, target_f, search)}
    summary.update(_ground_truth(ckpt, prep, masks, flat_scores, keep, output))
    summary["evaluation"] = grade(prep.evaluation, masks, prep.eval_labels_pos, task, method, flat_scores, ranking)
    summary["discovery_seconds"] = seconds
    summary["forward_examples"] = int(forward_examples)
    summary["edges_tested"] = None if edges_tested is None else int(edges_tested)
    summary["edges_per_second"] = graph.n_edges / seconds if seconds and seconds > 0 else float("nan")
    table = circuit_table(graph, masks, flat_scores, config)
    return Discovery(table, summary, masks, ev.unflatten(graph, flat_scores), config)


def summary_figures(summary: dict) -> dict:
    """summary.json as one flat record (jobs.parquet columns, MLflow metrics): the evaluation
    examples' figures become `eval_<name>` (eval_faithfulness, eval_full_accuracy, ...)."""
    flat = {k: v for k, v in summary.items() if k != "evaluation"}
    flat.update({f"eval_{k}": v for k, v in (summary.get("evaluation") or {}).items()})
    return flat


def _ground_truth(ckpt, prep: Prepared, masks, flat_scores, keep, output) -> dict:
    task, graph = prep.task, prep.graph
    out = {}
    if task.teacher is not None:
        teacher_ckpt = task.teacher()
        truth = live_edges(teacher_ckpt["weights"])
        if ckpt.get("regime") == "teacher":
            out.update(ev.edge_agreement(truth, flat_scores, keep, graph))
        else:  # a student: match hidden neurons to the teacher's first
            maps = ev.match_hidden(graph, Graph.from_checkpoint(teacher_ckpt), prep.clean_x)
            out.update(ev.edge_agreement(truth, flat_scores, keep, graph,
                                         lambda l, i, j: (l, int(maps[l][i]), int(maps[l + 1][j]))))
            out["ground_truth_matching"] = "hungarian |corr| of hidden activations"
    if task.dependencies is not None:
        dep = ev.dependency_agreement(graph, masks, task.dependencies)
        if output is not None:
            dep["dependencies_match"] = dep["dependencies_found"][output] == dep["dependencies_true"][output]
        out.update(dep)
    return out


def circuit_table(graph: Graph, masks, flat_scores: torch.Tensor, config: dict) -> pa.Table:
    """circuit.parquet's table: one row per edge in canonical order, schema metadata attached."""
    src_layer, src_pos, dst_pos, weight = [], [], [], []
    for l, w in enumerate(graph.weights):
        n_dst, n_src = w.shape
        src_layer.append(np.full(n_dst * n_src, l, dtype=np.int32))
        dst_pos.append(np.repeat(np.arange(n_dst, dtype=np.int32), n_src))
        src_pos.append(np.tile(np.arange(n_src, dtype=np.int32), n_dst))
        weight.append(w.reshape(-1).numpy().astype(np.float32))
    sl, sp, dp = np.concatenate(src_layer), np.concatenate(src_pos), np.concatenate(dst_pos)
    dl = sl + 1

    def names(layer, pos):  # "L{layer}.{pos}", built in Arrow (a Python f-string per edge is slow on big nets)
        return pc.binary_join_element_wise("L", pc.cast(pa.array(layer), pa.string()), ".",
                                           pc.cast(pa.array(pos), pa.string()), "")
    src, dst = names(sl, sp), names(dl, dp)
    schema = pa.schema([
        ("src", pa.string()), ("dst", pa.string()),
        ("src_layer", pa.int32()), ("src_pos", pa.int32()), ("dst_layer", pa.int32()), ("dst_pos", pa.int32()),
        ("weight", pa.float32()), ("score", pa.float64()), ("in_circuit", pa.bool_()),
    ], metadata={k: ("" if v is None else str(v)) for k, v in config.items()})
    cols = [src, dst, sl, sp, dl.astype(np.int32), dp, np.concatenate(weight),
            flat_scores.numpy().astype(np.float64), ev.flatten(masks).numpy()]
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, schema)], schema=schema)


# ---------------------------------------------------------------- files

def _draw(ckpt, masks, title, path, scores=None):
    from circuitry.workers.draw import draw_network

    draw_network(ckpt, path, edge_mask=masks, title=title, edge_scores=scores or None)


def discovery_files(d: Discovery, ckpt: dict, pictures: bool = True) -> dict[str, bytes]:
    """circuit.parquet, circuit.png (unless not `pictures`), then summary.json (last: its presence
    marks the result finished), as bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(d.table, sink)
    c = d.config
    sel = f"tau={c['threshold']:.4g}" if c["threshold"] is not None else (
        f"top-k={c['top_k']}" if c["top_k"] is not None else f"fraction={c['edge_fraction']}")
    if c.get("target_f") is not None:
        sel = f"f>={c['target_f']} ({sel})"
    title = f"{c['task']}/{c['regime']} {c['method']} {sel} {c['ablation']}: {d.summary['n_edges_kept']}/{d.summary['n_edges_total']} edges"
    files = {"circuit.parquet": sink.getvalue().to_pybytes()}
    if pictures:
        files["circuit.png"] = png_bytes(_draw, ckpt, d.masks, title, scores=d.scores)
    files["summary.json"] = json_bytes(d.summary)
    return files


def write_discovery(d: Discovery, out_dir, ckpt: dict) -> Path:
    """OUT/circuit.parquet, OUT/circuit.png, then OUT/summary.json, each written to a temporary
    name and renamed."""
    return write_files(discovery_files(d, ckpt), out_dir)


def export_eap_ig(d: Discovery, path) -> Path:
    """The EAP-IG library's graph JSON: {"cfg", "nodes": {name: in_graph}, "edges":
    {"src->dst": {"score", "in_graph"}}}, names as in circuit.parquet ("L{layer}.{pos}")."""
    t = d.table.to_pydict()
    nodes = {}
    for l, w in enumerate(d.masks):
        for p in range(w.shape[1]):
            nodes.setdefault(f"L{l}.{p}", False)
        for p in range(w.shape[0]):
            nodes.setdefault(f"L{l + 1}.{p}", False)
    edges = {}
    for s, dd, sc, keep in zip(t["src"], t["dst"], t["score"], t["in_circuit"]):
        edges[f"{s}->{dd}"] = {"score": float(sc), "in_graph": bool(keep)}
        if keep:
            nodes[s] = nodes[dd] = True
    shape = [d.masks[0].shape[1]] + [m.shape[0] for m in d.masks]
    cfg = {"n_layers": len(shape), "shape": shape, **{k: v for k, v in d.config.items()}}
    path = Path(path)
    write_files({path.name: json.dumps({"cfg": cfg, "nodes": nodes, "edges": edges}).encode()}, path.parent)
    return path
