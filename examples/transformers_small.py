"""Read issue 31's small transformer comparison (examples/transformers_small.sh): per-seed rows,
then bimt against vanilla of the same seed on the primary endpoints of docs/results.md's plan,
Holm-corrected as one family (orchestrator/primary.py's margins and readings).

    python examples/transformers_small.py sweeps/transformers_small 0.95

Endpoints (paired by seed): circuit edges at the target f (ratio, +-25%), the ground-truth grade
(1 where the circuit keeps a previous-token -> induction-head <k> edge and that head's -> logits
edge; difference, +-0.02), the generalisation gap (held-out f minus discovery f; difference,
+-0.02), induction accuracy (difference, +-0.02). Training and discovery seconds are secondary:
wall times on a shared machine, compared as ratios and read into nothing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from circuitry.orchestrator.stats import (holm, log_ratio_effect_size, p_ratio, paired_difference, paired_ratio, tost,
                                          tost_difference)

ALPHA = 0.05


def _seconds(path: Path) -> float:
    return float(path.read_text()) if path.exists() else float("nan")


def fewest_edges_seen(run: Path, target_f: float) -> int:
    """The fewest edges of any circuit with f >= target_f that any ACDC search of this model probed
    (every acdc-f* folder): ACDC's f is not monotone in tau on these graphs, so a bisection over
    tau can step past a sparser circuit that reaches the target."""
    probes = [p for f in run.glob("acdc-f*/summary.json") for p in json.loads(f.read_text()).get("search") or []]
    return min((p["edges"] for p in probes if p["f"] >= target_f), default=-1)


def load(folder: Path, target_f: str) -> dict[tuple[str, int], dict]:
    rows = {}
    for run in sorted(folder.glob("induction-*-s*")):
        _, regime, seed = run.name.split("-")
        train_file, circuit_file = run / "metrics.json", run / f"acdc-f{target_f}" / "summary.json"
        if not (train_file.exists() and circuit_file.exists()):
            continue
        t, c = json.loads(train_file.read_text()), json.loads(circuit_file.read_text())
        truth = c.get("ground_truth", {})
        rows[(regime, int(seed[1:]))] = {
            "edges": c["n_edges_kept"], "fewest_seen": fewest_edges_seen(run, float(target_f)), "total": c["n_edges_total"], "f": c["faithfulness"],
            "f_held_out": c["evaluation"]["faithfulness"], "reached": c.get("target_reached"),
            "gap": c["evaluation"]["faithfulness"] - c["faithfulness"],
            "recovered": float(bool(truth.get("recovered"))), "chains": truth.get("k_composition", []),
            "induction_head": truth.get("induction_head"), "induction_score": truth.get("induction_score"),
            "top_pair_kept": truth.get("keeps_top_heads_k_composition"),
            "accuracy": t.get("induction_accuracy", t.get("test_accuracy")), "tau": c.get("tau_found"),
            "train_s": t["train_seconds"],
            "discover_s": _seconds(circuit_file.parent / "discover_seconds.txt"),
        }
    return rows


def main(folder: str, target_f: str) -> None:
    rows = load(Path(folder), target_f)
    print("| regime | seed | induction acc. | edges / total | fewest seen | tau | f (disc.) | f (held out) | gap | recovered | k-composition kept | train s | ACDC s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (regime, seed), r in sorted(rows.items()):
        print(f"| {regime} | {seed} | {r['accuracy']:.3f} | {r['edges']} / {r['total']} | {r['fewest_seen']} | {r['tau']:.3g} | {r['f']:.3f} | "
              f"{r['f_held_out']:.3f} | {r['gap']:+.3f} | {'yes' if r['recovered'] else 'no'} | "
              f"{', '.join(r['chains']) or '-'} | {r['train_s']:.0f} | {r['discover_s']:.0f} |")
    for run in sorted(Path(folder).glob("tracr_*")):
        circuit = run / f"acdc-f{target_f}" / "summary.json"
        if circuit.exists():
            c = json.loads(circuit.read_text())
            t = c.get("ground_truth", {})
            print(f"{run.name}: {c['n_edges_kept']}/{c['n_edges_total']} edges, f {c['faithfulness']:.3f} "
                  f"(held out {c['evaluation']['faithfulness']:.3f}); truth edges kept {t.get('truth_edges_kept')}/"
                  f"{t.get('truth_edges')}, truth nodes kept {t.get('truth_nodes_kept')}/{t.get('truth_nodes')}")
    seeds = sorted(s for (reg, s) in rows if reg == "vanilla" and ("bimt", s) in rows)
    if not seeds:
        return
    pick = lambda regime, key: np.array([rows[(regime, s)][key] for s in seeds], dtype=float)  # noqa: E731
    endpoints = [("circuit edges", "edges", "ratio", 0.25), ("ground truth recovered", "recovered", "difference", 0.02),
                 ("generalisation gap", "gap", "difference", 0.02), ("induction accuracy", "accuracy", "difference", 0.02)]
    found, ps = [], []
    for name, key, scale, margin in endpoints:
        x, y = pick("bimt", key), pick("vanilla", key)
        if scale == "ratio":
            s = paired_ratio(x, y)
            est, lo, hi, d = s.geometric_mean, s.low, s.high, log_ratio_effect_size(x, y)
            p, pt = p_ratio(x, y), tost(x, y, margin).p_value
            text = f"x{est:.2f} [{lo:.2f}, {hi:.2f}]"
        else:
            s = paired_difference(x, y)
            est, d, p, pt = s.mean, s.effect_size, s.p_value, tost_difference(x, y, margin).p_value
            text = f"{est:+.3f} [{s.low:+.3f}, {s.high:+.3f}]"
        found.append((name, text, d, margin, scale))
        ps += [p, pt]
    adjusted = holm(ps)
    print(f"\nbimt vs vanilla, seeds {seeds} (n = {len(seeds)}); Holm over {sum(np.isfinite(ps))} p-values")
    print("| endpoint | estimate [95% CI] | d_z | Holm p (differ) | Holm p (same, TOST) | reading |")
    print("|---|---|---|---|---|---|")
    for i, (name, text, d, margin, scale) in enumerate(found):
        pd_, pt = adjusted[2 * i], adjusted[2 * i + 1]
        reading = "differ" if pd_ < ALPHA else f"same (±{margin:g})" if pt < ALPHA else "n.d."
        fmt = lambda v: "untestable" if not np.isfinite(v) else f"{v:.3g}"  # noqa: E731
        print(f"| {name} | {text} | {fmt(d)} | {fmt(pd_)} | {fmt(pt)} | {reading} |")
    for key in ("fewest_seen", "train_s", "discover_s"):
        s = paired_ratio(pick("bimt", key), pick("vanilla", key))
        print(f"secondary {key}: bimt/vanilla x{s.geometric_mean:.2f} [{s.low:.2f}, {s.high:.2f}]")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sweeps/transformers_small", sys.argv[2] if len(sys.argv) > 2 else "0.95")
