"""`circuitry discover`: find a checkpoint's circuit and write circuit.parquet, summary.json and
circuit.png (and optionally circuit.graphml, or an EAP-IG-style JSON). Bad input ends in one line naming the option
and the fix, exit code 2 (click.UsageError, which orchestrator.cli turns into that line)."""
from __future__ import annotations

from pathlib import Path

import click
import torch

from circuitry.workers.discover import DiscoverConfig, DiscoveryInputError, export_eap_ig, find_circuit, write_discovery
from circuitry.workers.export import export_graphml
from circuitry.workers.model import CheckpointError, load_checkpoint
from circuitry.workers.names import ABLATIONS, DEFAULT_ABLATION, DEFAULT_ORDER, METHODS, ORDERS


def _load_data(path: str) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise click.BadParameter(f"{path}: no such file; save a dict of tensors with torch.save", param_hint="--data") from None
    except Exception as e:
        raise click.BadParameter(f"{path}: not a readable torch file ({type(e).__name__}); save a dict with 'clean', 'corrupt', 'labels' via torch.save",
                                 param_hint="--data") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: holds a {type(data).__name__}, expected a dict with 'clean' and 'corrupt' tensors", param_hint="--data")
    return data


@click.command("discover")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="A circuitry.mlp/1 model.pt.")
@click.option("--method", required=True, type=click.Choice(METHODS), help="Discovery method.")
@click.option("--threshold", type=float, default=None, help="tau: ACDC removes an edge whose metric increase is < tau; score methods keep |score| >= tau.")
@click.option("--target-f", "target_f", type=float, default=None,
              help="Instead of a threshold: the circuit at faithfulness >= F on the discovery examples (acdc: the "
                   "largest tau reaching it, found by search; score methods: the smallest top-k).")
@click.option("--order", type=click.Choice(ORDERS), default=DEFAULT_ORDER, show_default=True,
              help="acdc: the order each receiver's senders are tried in (random: a permutation drawn from --seed).")
@click.option("--ablation", type=click.Choice(ABLATIONS), default=DEFAULT_ABLATION, show_default=True)
@click.option("--output", "output", type=click.IntRange(min=0), default=None, help="Circuit for output K alone (default: all outputs).")
@click.option("--top-k", type=click.IntRange(min=0), default=None, help="Score methods: keep the k edges of largest |score|.")
@click.option("--edge-fraction", type=click.FloatRange(0, 1), default=None, help="Score methods: keep this fraction of edges.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None, help="torch.save'd dict: clean, corrupt[, labels].")
@click.option("--export", "export", type=click.Choice(["graphml", "eap-ig"]), default=None,
              help="Also write graphml: circuit.graphml (networkx, Gephi, Cytoscape), or eap-ig: graph_eap_ig.json, "
                   "EAP-IG's node/edge/score layout (EAP-IG's own Graph.from_json cannot load it: it only "
                   "builds transformer graphs).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Corruption pairing seed (the examples come from the model's own training seed).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for circuit.parquet etc.")
def discover_cmd(model_path, method, threshold, target_f, order, ablation, output, top_k, edge_fraction, data_path,
                 export, seed, out):
    """Find the circuit of a trained model (ACDC, exact ablation scores, EAP, EAP-IG)."""
    if threshold is not None and not threshold >= 0:
        raise click.BadParameter(f"must be >= 0, got {threshold}; tau is a metric increase", param_hint="--threshold")
    if target_f is not None and not 0 < target_f <= 1:
        raise click.BadParameter(f"must be in (0, 1], got {target_f}; it is a faithfulness f", param_hint="--target-f")
    try:
        ckpt = load_checkpoint(model_path)
    except CheckpointError as e:
        raise click.BadParameter(str(e), param_hint="--model") from None
    data = _load_data(data_path) if data_path else None
    config = DiscoverConfig(method, threshold, top_k, edge_fraction, target_f, order, ablation, output, seed)
    try:
        d = find_circuit(ckpt, config, data=data)
    except DiscoveryInputError as e:
        raise click.BadParameter(str(e), param_hint=e.option) from None
    out_dir = write_discovery(d, out, ckpt)
    if export == "graphml":
        export_graphml(d.table, ckpt, Path(out_dir) / "circuit.graphml")
    elif export == "eap-ig":
        export_eap_ig(d, Path(out_dir) / "graph_eap_ig.json")
    s = d.summary
    click.echo(f"{s['task']} {method} ({ablation}): {s['n_edges_kept']}/{s['n_edges_total']} edges kept, "
               f"faithfulness {s['faithfulness']:.3g} ({s['n_discovery']} examples), held out "
               f"{s['evaluation']['faithfulness']:.3g} ({s['n_evaluation']}), {s['discovery_seconds']:.2f}s "
               f"-> {out_dir / 'circuit.parquet'}")
    if target_f is not None:
        click.echo(_target_line(s))


def _target_line(s: dict) -> str:
    """The search's answer, with taus at full precision (repr), so that --threshold can repeat it."""
    reached = "reached" if s["target_reached"] else "NOT reached"
    if s["tau_found"] is not None:
        return (f"target f >= {s['target_f']} {reached}: tau_found {s['tau_found']!r}, tau_above {s['tau_above']!r} "
                f"({len(s['search'])} ACDC runs)")
    return f"target f >= {s['target_f']} {reached}: top-k {s['top_k']} ({len(s['search'])} circuits tried)"
