"""Naive sequential ACDC vs the fast exact `acdc`, plus `exact` and `eap` throughput.

For each net: run both ACDCs in this process on the same examples and tau, check that the circuits
are identical edge for edge, and print edges/s, the speed-up and the process's peak RSS. On the
big digits net the naive pass (one full masked forward per edge) is first timed on a prefix of
ACDC's visiting order (all output receivers plus the first hidden receivers); when the whole pass
would take longer than --naive-max-seconds, its per-edge time is extrapolated to the whole graph
(marked "extrapolated") and the fast circuit is checked on that prefix only; otherwise the whole
naive pass runs and the circuits are compared edge for edge.

    python benchmarks/acdc.py [--random] [--threads 1]
By default the independence and digits nets are briefly BIMT-trained (workers.train) and a
random-weight digits net is added as the dense worst case; --random uses random weights only.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tasks  # noqa: E402
from workers.acdc import acdc, acdc_naive, exact_scores  # noqa: E402
from workers.attribution import attribution_scores  # noqa: E402
from workers.discover import prepare  # noqa: E402
from workers.model import CoordMLP  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_checkpoint(task_name: str, width: int | None, steps: int, random: bool) -> tuple[dict, str]:
    task = tasks.get_task(task_name)
    shape = list(task.shape)
    if width:
        shape[1:-1] = [width] * (len(shape) - 2)
    if not random:
        try:
            from workers.train import TrainConfig, train
            cfg = TrainConfig(task=task_name, regime="bimt", steps=steps, seed=0, width=width, device="cpu")
            t0 = time.perf_counter()
            ckpt = train(cfg).checkpoint
            return ckpt, f"bimt-trained {steps} steps ({time.perf_counter() - t0:.0f}s)"
        except ImportError:
            pass
    torch.manual_seed(0)
    return CoordMLP(shape).to_checkpoint(task_name, "random", 0, {}), "random weights"


def visiting_order_prefix(shapes, n_edges: int) -> list[torch.Tensor]:
    """Masks of the first n_edges edges in ACDC's visiting order."""
    L = len(shapes) - 1
    seen = [torch.zeros(shapes[l + 1], shapes[l], dtype=torch.bool) for l in range(L)]
    left = n_edges
    for m in range(L, 0, -1):
        flat = seen[m - 1].view(-1)
        k = min(left, flat.numel())
        flat[:k] = True
        left -= k
    return seen


def pick_tau(exact: torch.Tensor) -> float:
    """The median of the edges' exact scores that stand above float64 rounding noise (scores below
    1e-9 of the largest are zero up to rounding), moved halfway to the next score so that no edge's
    increase ties tau: decisions at rounding level are decided by rounding in any implementation."""
    real = torch.sort(exact[exact > 1e-9 * exact.max()]).values
    if real.numel() < 2:
        return 1e-3
    k = real.numel() // 2
    return float(0.5 * (real[k - 1] + real[k]))


def bench(name: str, ckpt: dict, naive_budget_edges: int | None, out_rows: list, naive_max_seconds: float):
    prep = prepare(ckpt, ablation="resample")
    p, g = prep.problem, prep.graph
    E = g.n_edges
    ex, _ = exact_scores(p)
    tau = pick_tau(ex)

    t0 = time.perf_counter()
    fast = acdc(p, tau)
    t_fast = time.perf_counter() - t0
    rss_fast = peak_rss_mb()

    n_naive = E if naive_budget_edges is None else min(E, naive_budget_edges)
    t0 = time.perf_counter()
    naive = acdc_naive(p, tau, max_edges=n_naive)
    t_naive = time.perf_counter() - t0
    if n_naive < E and t_naive / n_naive * E <= naive_max_seconds:  # affordable: run it all
        n_naive = E
        t0 = time.perf_counter()
        naive = acdc_naive(p, tau)
        t_naive = time.perf_counter() - t0
    seen = visiting_order_prefix(list(g.shape), n_naive)
    same = all(torch.equal(a[s], b[s]) for a, b, s in zip(fast.masks, naive.masks, seen))
    naive_eps = n_naive / t_naive
    t0 = time.perf_counter()
    exact_scores(p)
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    attribution_scores(p, prep.labels_pos, "eap")
    t_eap = time.perf_counter() - t0
    kept = sum(int(m.sum()) for m in fast.masks)
    out_rows.append({
        "net": name, "edges": E, "N": p.n_examples, "tau": tau, "kept": kept,
        "identical": f"{same}" + ("" if n_naive == E else f" (first {n_naive} edges)"),
        "naive e/s": naive_eps, "naive s": E / naive_eps, "naive_extrapolated": n_naive != E,
        "acdc e/s": E / t_fast, "acdc s": t_fast, "speed-up": (E / t_fast) / naive_eps,
        "exact e/s": E / t_exact, "eap e/s": E / t_eap, "peak RSS MB": rss_fast,
    })


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--random", action="store_true", help="random-weight nets instead of trained ones")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--naive-edges", type=int, default=4000, help="naive edges timed first on the big net")
    ap.add_argument("--naive-max-seconds", type=float, default=120,
                    help="run the whole naive pass when its extrapolated time is below this")
    ap.add_argument("--steps", type=int, default=1000, help="training steps of the trained nets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    nets = [("independence 4-20-20-2", "independence", None, None, args.random),
            ("digits 64-200-200-10", "digits", 200, args.naive_edges, args.random),
            # the worst case: dense random weights, every receiver reaches the outputs
            ("digits 64-200-200-10 random", "digits", 200, args.naive_edges, True)]
    if args.random:
        nets = nets[:2]
    for label, task, width, naive_budget, random in nets:
        ckpt, how = make_checkpoint(task, width, args.steps, random)
        print(f"{label}: {how}", flush=True)
        bench(label, ckpt, naive_budget, rows, args.naive_max_seconds)
    print(f"\ntorch threads: {args.threads}; float64; resample ablation; tau = median exact score above rounding noise (pick_tau)")
    cols = ["net", "edges", "N", "kept", "identical", "naive e/s", "naive s", "acdc e/s", "acdc s",
            "speed-up", "exact e/s", "eap e/s", "peak RSS MB"]
    print(" | ".join(cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if c == "naive s" and r["naive_extrapolated"]:
                cells.append(f"{v:.0f} (extrapolated)")
            elif isinstance(v, float):
                cells.append(f"{v:.3g}" if v < 1000 else f"{v:.0f}")
            else:
                cells.append(str(v))
        print(" | ".join(cells))


if __name__ == "__main__":
    main()
