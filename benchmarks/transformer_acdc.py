"""ACDC on the head-level transformer graph: the fast `acdc` beside the plain loop (one full
masked forward per candidate, `acdc_naive`), and a GPT-2-small-shaped row for EAP, EAP-IG and
ACDC's edges/s.

    python benchmarks/transformer_acdc.py [--threads 1] [--tau 0.3] [--plain-prefix K] [--gpt2-seconds 60]

Row 1: a random 4-layer, 8-head, d_model 128 model with MLPs (d_mlp 512, d_head 16, vocabulary
50; 1,519 edges), batch 32, sequence 16, KL on the second half of the positions, resample
ablation. Both ACDCs run in this process on the same examples and tau; the circuits are compared
edge for edge. With --plain-prefix K the plain loop runs only its first K candidates and its
time is extrapolated per candidate (marked so; each candidate costs one full forward whatever the
circuit) and the circuits are compared on that prefix.
Row 2: a random GPT-2-small-shaped model (12 layers, 12 heads, d_model 768, d_mlp 3072; 32,491
edges; vocabulary 1,000 instead of 50,257 to keep memory small), batch 4, sequence 8: EAP and
EAP-IG seconds, and ACDC run for --gpt2-seconds, its edges/s over the candidates it decided.
Random weights at scale 1 make every component matter; tau sets how sparse the circuit is (the
fast path's cost falls with the live circuit below a receiver, the plain loop's does not).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuitry.workers.acdc import transformer as ta  # noqa: E402
from circuitry.workers.transformer_attribution import attribution_scores  # noqa: E402
from circuitry.workers.transformer_graph import TransformerGraph, TransformerProblem, Weights  # noqa: E402


def problem(n_layers, n_heads, d_model, d_head, d_mlp, vocab, batch, seq, seed=0):
    w = Weights.random(n_layers, n_heads, d_model, d_head, d_mlp, d_vocab=vocab, n_ctx=seq, seed=seed)
    g = TransformerGraph(w)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, vocab, (batch, seq), generator=gen)
    xc = torch.randint(0, vocab, (batch, seq), generator=gen)
    return TransformerProblem.build(g, x, xc, "kl", torch.arange(seq // 2, seq))


class _Stop(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tau", type=float, default=0.3)
    ap.add_argument("--plain-prefix", type=int, default=None)
    ap.add_argument("--gpt2-seconds", type=float, default=60.0)
    ap.add_argument("--no-gpt2", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")

    p = problem(4, 8, 128, 16, 512, 50, 32, 16)
    g = p.graph
    t0 = time.perf_counter()
    fast = ta.acdc(p, args.tau)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = ta.acdc_naive(p, args.tau, max_edges=args.plain_prefix)
    t_plain = time.perf_counter() - t0
    tried = plain.edges_tested
    if args.plain_prefix is not None and tried < g.n_edges:
        # compare on the receivers the prefix finished; extrapolate the plain loop per candidate
        done = torch.zeros_like(g.real)
        count = 0
        for r in ta.receiver_order(p):
            if count + g.n_senders[r] > tried:
                break
            done[r, :g.n_senders[r]] = True
            count += g.n_senders[r]
        same = torch.equal(fast.mask & done, plain.mask & done)
        t_plain_all, note = t_plain / tried * g.n_edges, f" (extrapolated from {tried} candidates)"
    else:
        same = torch.equal(fast.mask & g.real, plain.mask & g.real)
        t_plain_all, note = t_plain, ""
    kept = int((fast.mask & g.real).sum())
    print(f"4 layers x 8 heads, d_model 128, d_mlp 512, batch 32, seq 16: {g.n_edges} edges, tau {args.tau:g}, "
          f"{kept} kept; acdc {t_fast:.2f} s ({g.n_edges / t_fast:.0f} edges/s), plain loop {t_plain_all:.1f} s{note}, "
          f"{t_plain_all / t_fast:.1f}x; identical circuits: {same}")

    if args.no_gpt2:
        return
    p = problem(12, 12, 768, 64, 3072, 1000, 4, 8)
    g = p.graph
    for method in ("eap", "eap-ig"):
        t0 = time.perf_counter()
        attribution_scores(p, method)
        print(f"GPT-2-small shape ({g.n_edges} edges, batch 4, seq 8): {method} {time.perf_counter() - t0:.2f} s")
    decided = [0]
    t0 = time.perf_counter()

    def progress(n):
        decided[0] += n
        if time.perf_counter() - t0 > args.gpt2_seconds:
            raise _Stop

    try:
        ta.acdc(p, args.tau, progress=progress)
    except _Stop:
        pass
    dt = time.perf_counter() - t0
    print(f"GPT-2-small shape: acdc decided {decided[0]} edges in {dt:.1f} s: {decided[0] / dt:.0f} edges/s "
          f"(tau {args.tau:g}, from the logits backwards)")


if __name__ == "__main__":
    main()
