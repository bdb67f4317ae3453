"""The examples a discovery runs on, checked and prepared (docs/design.md, "The examples a discovery
runs on"), two halves: the discovery examples (the method sees only these; mean ablation and
EAP-IG's mean input average over them) and the evaluation examples, on which every circuit is
graded again (summary.json's `evaluation`).
- A task whose generator can draw more (`Task.fresh`: the symbolic formulas, two_moons,
  planted_teacher) gives 2 x FRESH_PER_HALF fresh examples for the model's data seed (its training
  seed, from the checkpoint's config), none of them a training example; the first half discovers,
  the second grades (`examples_from` "generator"). A few dozen examples made f noisy enough to
  turn a generalisation verdict (issue 29): with 50, held-out f of one circuit moved by 0.1.
- A fixed split (digits, MNIST, modular addition) gives its whole test split of that seed, in the
  order the task generates it, cut in two halves (`examples_from` "test split").
summary.json's `generalisation_gap` is held-out f minus discovery f. Each half's corrupted inputs
pair examples within that half (task.corrupt with the discover seed, which chooses nothing else).
`--data` examples (an MLP task's, or a transformer task's sequences) are split into the same two
halves.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from circuitry.tasks import get_task
from circuitry.workers.discover_config import DiscoveryInputError
from circuitry.workers.graph import Graph, Problem
from circuitry.workers.names import ABLATIONS, FRESH_PER_HALF


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


def _check_sequence_data(task, model: dict, data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`--data` for a transformer task, against the checkpoint's `model` table: 'clean' and
    'corrupt' [N, T] token ids (or [N, T, d_input] values), T long enough for the task's scored
    positions and at most n_ctx; 'labels' at the scored positions, [N, P] class ids (or
    [N, P, k] values, k <= d_output)."""
    if not isinstance(data, dict) or "clean" not in data or "corrupt" not in data:
        raise DiscoveryInputError("--data", "expected a dict with tensors 'clean', 'corrupt' and optionally 'labels'")
    clean, corrupt, labels = data["clean"], data["corrupt"], data.get("labels")
    if not isinstance(clean, torch.Tensor) or not isinstance(corrupt, torch.Tensor):
        raise DiscoveryInputError("--data", "'clean' and 'corrupt' must be tensors")
    tokens, n_scored, shortest = model["d_vocab"] > 0, len(task.positions), max(task.positions) + 1
    shape = "[N, T]" if tokens else f"[N, T, {model['d_input']}]"
    if (clean.dim() != (2 if tokens else 3) or (not tokens and clean.shape[2] != model["d_input"])
            or clean.shape[0] < 1 or not shortest <= clean.shape[1] <= model["n_ctx"]):
        raise DiscoveryInputError("--data", f"'clean' must be {shape} with T in {shortest}..{model['n_ctx']} "
                                  f"(task {task.name!r} scores positions up to {shortest - 1}), got {list(clean.shape)}")
    if corrupt.shape != clean.shape:
        raise DiscoveryInputError("--data", f"'corrupt' must have the shape of 'clean' {list(clean.shape)}, got {list(corrupt.shape)}")
    for name, t in (("clean", clean), ("corrupt", corrupt)):
        if tokens and (t.is_floating_point() or t.is_complex() or t.min() < 0 or t.max() >= model["d_vocab"]):
            raise DiscoveryInputError("--data", f"'{name}' must hold token ids in [0, {model['d_vocab']})")
        if not tokens and (not t.is_floating_point() or not torch.isfinite(t).all()):
            raise DiscoveryInputError("--data", f"'{name}' must hold finite floating-point values")
    as_input = (lambda t: t.long()) if tokens else (lambda t: t.float())  # noqa: E731
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape[:2] != (clean.shape[0], n_scored):
            raise DiscoveryInputError("--data", f"'labels' must be a tensor [N, {n_scored}, ...]: one row per example, "
                                      "one column per scored position")
        if task.kind == "classification":
            if (labels.is_floating_point() or labels.dim() != 2 or labels.min() < 0
                    or labels.max() >= model["d_output"]):
                raise DiscoveryInputError("--data", f"'labels' must be class ids [N, {n_scored}] in "
                                          f"[0, {model['d_output']})")
            labels = labels.long()
        elif (labels.dim() != 3 or labels.shape[2] > model["d_output"] or not labels.is_floating_point()
              or not torch.isfinite(labels).all()):
            raise DiscoveryInputError("--data", f"'labels' must be finite values [N, {n_scored}, k], k <= "
                                      f"{model['d_output']}")
        else:
            labels = labels.float()
    return as_input(clean), as_input(corrupt), labels


def data_seed(ckpt: dict) -> int:
    """The seed the model's data was drawn with: its training seed (the checkpoint's config)."""
    config = ckpt.get("config") or {}
    return int(config.get("seed", ckpt.get("seed", 0)))


def split_examples(task, ckpt: dict, data: dict | None, seed: int) -> tuple[tuple, tuple, dict]:
    """(clean, corrupt, labels) of the discovery and of the evaluation examples, and what
    summary.json says about them (module doc)."""
    if data is None:
        if task.fresh is not None:
            x, y = task.fresh_examples(data_seed(ckpt), 2 * FRESH_PER_HALF)
            info = {"data_seed": data_seed(ckpt), "examples_from": "generator", "n_test_split": None}
        else:
            split = task.make_data(data_seed(ckpt))
            x, y = split.x_test, split.y_test
            info = {"data_seed": data_seed(ckpt), "examples_from": "test split", "n_test_split": len(x)}
        half = len(x) // 2
        parts = [(c, task.corrupt(c, seed), l) for c, l in ((x[:half], y[:half]), (x[half:], y[half:]))]
    else:
        clean, corrupt, labels = (_check_data(task, data) if task.transformer is None
                                  else _check_sequence_data(task, ckpt["model"], data))
        if clean.shape[0] < 2:
            raise DiscoveryInputError("--data", "'clean' needs at least 2 examples: the first half finds the "
                                      "circuit, the second half grades it")
        half = clean.shape[0] // 2
        cut = lambda t: (None, None) if t is None else (t[:half], t[half:])  # noqa: E731
        (c0, c1), (k0, k1), (l0, l1) = cut(clean), cut(corrupt), cut(labels)
        parts = [(c0, k0, l0), (c1, k1, l1)]
        info = {"data_seed": None, "examples_from": "--data", "n_test_split": None}
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


def circuit_metric(task, metric: str | None) -> str:
    """The metric a discovery of `task` uses: `metric`, or the task's own when None. logit_diff
    reads class logits: a regression task has none."""
    if metric is None:
        return task.metric
    if metric == "logit_diff" and task.kind != "classification":
        raise DiscoveryInputError("--metric", f"logit_diff needs a classifier; task {task.name!r} is a "
                                  f"{task.kind}: use --metric {task.metric}")
    return metric


def _discovery(ckpt: dict, ablation: str, output: int | None, data: dict | None, seed: int,
               metric: str | None = None):
    """The checked task, the graph, the discovery examples' problem, both halves of the examples
    and what summary.json says of them (`split_examples`)."""
    if ablation not in ABLATIONS:
        raise DiscoveryInputError("--ablation", f"unknown ablation {ablation!r}: choose one of {', '.join(ABLATIONS)}")
    task = check_task(ckpt)
    kind = circuit_metric(task, metric)
    if kind == "logit_diff" and output is not None:
        raise DiscoveryInputError("--output", "the logit_diff metric reads every output: drop --output")
    if output is not None and not 0 <= output < task.shape[-1]:
        raise DiscoveryInputError("--output", f"output {output} out of range: the model has outputs 0..{task.shape[-1] - 1}")
    discovery, evaluation, info = split_examples(task, ckpt, data, seed)
    graph = Graph.from_checkpoint(ckpt)
    problem = Problem.build(graph, discovery[0], discovery[1], kind, ablation, output)
    return task, graph, problem, discovery, evaluation, info


def prepare(ckpt: dict, *, ablation: str = "resample", output: int | None = None,
            data: dict | None = None, seed: int = 0, metric: str | None = None) -> Prepared:
    """The graph, the discovery and evaluation examples (module doc) and the metric (`metric`,
    else the task's)."""
    task, graph, problem, (clean, _, labels), (e_clean, e_corrupt, e_labels), info = _discovery(
        ckpt, ablation, output, data, seed, metric)
    evaluation = evaluation_problem(problem, e_clean, e_corrupt, output)
    return Prepared(task, graph, problem, clean, _labels_pos(task, graph, labels), evaluation,
                    _labels_pos(task, graph, e_labels), info)


def discovery_problem(ckpt: dict, *, ablation: str = "resample", output: int | None = None,
                      seed: int = 0, metric: str | None = None) -> Problem:
    """`prepare(...).problem` alone, the evaluation examples' activations not computed: what each
    chunk of a fanned-out `exact` job scores against (they are half of `prepare`'s time)."""
    return _discovery(ckpt, ablation, output, None, seed, metric)[2]
