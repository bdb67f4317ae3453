"""Circuit discovery on a `circuitry.mlp/1` checkpoint: the entry point the orchestrator calls.

    d = discover(ckpt, "acdc", 0.01)            # or any of workers.names.METHODS
    d = find_circuit(ckpt, DiscoverConfig("acdc", 0.01))   # the same, from a typed config
    write_discovery(d, out_dir, ckpt)           # circuit.parquet, summary.json, circuit.png

What to do is a `DiscoverConfig` (workers.discover_config; `discover`'s keywords build one, and
`find_circuit` takes one). The examples: the model's own test split, halved into discovery and
evaluation examples (workers.discovery_data). circuit.parquet: workers.circuit_file.

Methods and score semantics (docs/design.md; the `score` column of circuit.parquet):
- `acdc`: the metric increase measured when the edge was tried; the edge is removed when that
  increase is < tau (workers.acdc, exactly the sequential definition).
- `exact`: metric(full model with only this edge ablated) - metric(full model); metric(full) = 0.
- `eap`, `eap-ig`: the attribution estimate of the change ablating the edge makes to the linear
  restoration metric r, r(full) = 1, r(empty circuit) = 0 (workers.attribution); signed.
Score methods keep edges by tau (|score| >= tau), by top-k or by edge fraction (largest |score|,
ties to the earlier canonical edge).

Circuits at a target faithfulness (`target_f`, workers.target): acdc searches tau for the largest
tau whose circuit reaches f >= target_f on the discovery examples (a local bracket tau_found <
tau_above, ratio <= 1.2; each probe an exact ACDC run) and writes the best circuit it tried (the
sparsest that reaches target_f, else the most faithful; tau_found is its tau); score
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

Edge order everywhere (table rows, `acdc.exact_scores` slices, flat score arrays): weight matrix l, then
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
import pyarrow.parquet as pq
import torch

from circuitry.tasks.base import live_edges
from circuitry.workers import acdc as acdc_mod
from circuitry.workers import evaluate as ev
from circuitry.workers.attribution import attribution_scores
from circuitry.workers.circuit_file import circuit_table
from circuitry.workers.device import pick_device
from circuitry.workers.discover_config import DiscoverConfig, DiscoveryInputError
from circuitry.workers.discovery_data import Prepared, prepare
from circuitry.workers.graph import Graph, Problem
from circuitry.workers.names import SCORE_METHODS
from circuitry.workers.files import json_bytes, write_files
from circuitry.workers.outputs import png_bytes
from circuitry.workers.profile import PeakMemory
from circuitry.workers.target import Probe, Search, search_top_k, search_tau

__all__ = ["Discovery", "DiscoverConfig", "DiscoveryInputError", "attribute", "discover", "discovery_from_scores",
           "evaluate", "export_eap_ig", "find_circuit", "model_id", "prepare", "summary_figures", "write_discovery"]

@dataclass
class Discovery:
    table: pa.Table  # circuit.parquet, schema metadata included
    summary: dict  # summary.json
    masks: list[torch.Tensor]  # bool, one per weight matrix, True = in circuit
    scores: list[torch.Tensor] = field(default_factory=list)  # float64, shapes of the weights
    config: dict = field(default_factory=dict)  # method, threshold, ablation, metric, ...


# ---------------------------------------------------------------- the entry points

def discover(ckpt: dict, method: str, threshold: float | None = None, *, ablation: str = "resample",
             output: int | None = None, data: dict | None = None, seed: int = 0,
             top_k: int | None = None, edge_fraction: float | None = None, target_f: float | None = None,
             order: str = "ascending", progress: Callable[[int], None] | None = None,
             device: str = "auto") -> Discovery:
    """Find the circuit of `ckpt` with `method` (module doc): `find_circuit` with the
    `DiscoverConfig` these keywords name."""
    config = DiscoverConfig(method, threshold, top_k, edge_fraction, target_f, order, ablation, output, seed, device)
    return find_circuit(ckpt, config, data=data, progress=progress)


@dataclass
class Cost:
    """What a discovery spent (summary.json's cost figures)."""

    seconds: float
    forward_examples: int
    edges_tested: int | None  # the candidate edges the method's definition evaluates (module doc)


def find_circuit(ckpt: dict, config: DiscoverConfig, *, data: dict | None = None,
                 progress: Callable[[int], None] | None = None) -> Discovery:
    """Find the circuit `config` asks for; `progress(n)` is called with the number of edges just
    evaluated. Deterministic for the same inputs. The method runs on `config.device`; its results
    and the grading are on the CPU. `config.target_f`: the circuit at that faithfulness instead of
    at a threshold (module doc). A `circuitry.transformer/1` checkpoint is handed to the
    head-level graph (workers.transformer_discover; CPU)."""
    c = config.check()
    if ckpt.get("format") == "circuitry.transformer/1":
        from circuitry.workers.transformer_discover import discover_transformer

        if c.metric is not None:
            raise DiscoveryInputError("--metric", "a transformer's discovery uses its task's metric: drop --metric")

        return discover_transformer(ckpt, c.method, c.threshold, ablation=c.ablation, data=data, seed=c.seed,
                                    top_k=c.top_k, edge_fraction=c.edge_fraction, target_f=c.target_f,
                                    order=c.order, progress=progress)
    dev = pick_device(c.device)
    t0 = time.perf_counter()
    search, ranking = None, None
    with PeakMemory(dev) as mem:
        prep = prepare(ckpt, ablation=c.ablation, output=c.output, data=data, seed=c.seed, metric=c.metric)
        problem = prep.problem.to(dev)
        masks, tested = None, None
        if c.method == "acdc" and c.target_f is not None:
            search, spent, tested = acdc_at_target(prep, problem, c.target_f, c.order, c.seed, progress)
            res, c = search.result, replace(c, threshold=search.found)
            scores, masks = ev.flatten(res.scores), res.masks
        elif c.method == "acdc":
            res = acdc_mod.acdc(problem, c.threshold, progress=progress, order=c.order, seed=c.seed)
            scores, masks, spent, tested = ev.flatten(res.scores), res.masks, res.forward_examples, res.edges_tested
        elif c.method == "exact":
            scores, spent = acdc_mod.exact_scores(problem, progress=progress)
            tested = prep.graph.n_edges
        else:
            per_layer, spent = attribution_scores(problem, c.method)
            scores = ev.flatten([s.cpu() for s in per_layer])
            if progress:
                progress(prep.graph.n_edges)
        if c.method != "acdc" and c.target_f is not None:
            ranking = ev.edge_ranking(scores)
            search, top_k = top_k_at_target(prep, scores, c.target_f, ranking)
            c = replace(c, top_k=top_k)
    d = _assemble(ckpt, prep, c, scores, masks, Cost(time.perf_counter() - t0, spent, tested), search, ranking)
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
    the search (its `result` the EdgeResult at tau_found, the best circuit tried) and the whole search's example-forwards
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


def discovery_from_scores(ckpt: dict, scores, config: DiscoverConfig, *, data: dict | None = None,
                          seconds: float = float("nan"), forward_examples: int | None = None) -> Discovery:
    """A Discovery from precomputed score-method scores (e.g. concatenated `acdc.exact_scores`
    chunks): the same files a one-pass `find_circuit` would write, up to the timing fields."""
    if config.method not in SCORE_METHODS:
        raise DiscoveryInputError("--method", f"scores can be assembled for {', '.join(SCORE_METHODS)} only")
    c = config.check()
    prep = prepare(ckpt, ablation=c.ablation, output=c.output, data=data, seed=c.seed, metric=c.metric)
    flat = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if flat.numel() != prep.graph.n_edges:
        raise ValueError(f"got {flat.numel()} scores for {prep.graph.n_edges} edges")
    if forward_examples is None:
        forward_examples = prep.problem.n_examples * (2 + prep.graph.n_edges)
    search, ranking = None, ev.edge_ranking(flat)
    if c.target_f is not None:
        search, top_k = top_k_at_target(prep, flat, c.target_f, ranking)
        c = replace(c, top_k=top_k)
    cost = Cost(seconds, forward_examples, prep.graph.n_edges if c.method == "exact" else None)
    return _assemble(ckpt, prep, c, flat, None, cost, search, ranking)


# ---------------------------------------------------------------- EAP-IG-style API on a Graph

def attribute(graph: Graph, clean: torch.Tensor, corrupt: torch.Tensor, *, method: str, metric: str,
              ablation: str = "resample", output: int | None = None,
              threshold: float | None = None, progress: Callable[[int], None] | None = None) -> acdc_mod.EdgeResult:
    """Score (and for acdc, select) every edge of `graph` on these examples (all of them: no
    split). `metric` is "mse", "kl" or (classifiers) "logit_diff". Returns per-matrix masks (acdc's circuit; all True for
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


# ---------------------------------------------------------------- selection and grading

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


def _assemble(ckpt, prep: Prepared, c: DiscoverConfig, flat_scores, masks, cost: Cost,
              search: Search | None = None, ranking: torch.Tensor | None = None) -> Discovery:
    """The Discovery of a circuit found as `c` asks: its table, masks, scores and summary.json."""
    graph, problem, task = prep.graph, prep.problem, prep.task
    if c.method in SCORE_METHODS and ranking is None:
        # sorted once: the selection and both grades' faithfulness curves take top-k of it
        ranking = ev.edge_ranking(flat_scores)
    if masks is None:
        masks = select_edges(graph, flat_scores, c.threshold, c.top_k, c.edge_fraction, ranking)
    keep = ev.flatten(masks)
    config = {"method": c.method, "threshold": c.threshold, "top_k": c.top_k, "edge_fraction": c.edge_fraction,
              "target_f": c.target_f, "order": c.order,
              "ablation": c.ablation, "metric": problem.kind, "task": task.name,
              "regime": str(ckpt.get("regime", "")), "seed": int(ckpt.get("seed", 0)),
              "discovery_seed": c.seed, "output": c.output, "model_id": model_id(ckpt)}
    summary = {**config, **prep.examples, "n_examples": problem.n_examples, **ev.sparsity(masks),
               **grade(problem, masks, prep.labels_pos, task, c.method, flat_scores, ranking),
               **_target_figures(c.method, c.target_f, search)}
    summary.update(_ground_truth(ckpt, prep, masks, flat_scores, keep, c.output))
    summary["evaluation"] = grade(prep.evaluation, masks, prep.eval_labels_pos, task, c.method, flat_scores, ranking)
    # the "generalise" endpoint: how much f the circuit loses on examples discovery never saw
    summary["generalisation_gap"] = summary["evaluation"]["faithfulness"] - summary["faithfulness"]
    summary["discovery_seconds"] = cost.seconds
    summary["forward_examples"] = int(cost.forward_examples)
    summary["edges_tested"] = None if cost.edges_tested is None else int(cost.edges_tested)
    summary["edges_per_second"] = graph.n_edges / cost.seconds if cost.seconds and cost.seconds > 0 else float("nan")
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


# ---------------------------------------------------------------- files

def _draw(ckpt, masks, title, path, scores=None):
    from circuitry.workers.draw import draw_network

    draw_network(ckpt, path, edge_mask=masks, title=title, edge_scores=scores or None)


def discovery_files(d: Discovery, ckpt: dict, pictures: bool = True) -> dict[str, bytes]:
    """circuit.parquet, circuit.png (unless not `pictures`), then summary.json (last: its presence
    marks the result finished), as bytes. A transformer's discovery has no picture yet."""
    if not isinstance(d, Discovery):  # workers.transformer_discover.TransformerDiscovery
        return {"circuit.parquet": _parquet_bytes(d.table), "summary.json": json_bytes(d.summary)}
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


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


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
