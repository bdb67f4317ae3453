"""`circuitry discover`: find a checkpoint's circuit and write circuit.parquet, summary.json and
circuit.png (and optionally circuit.graphml, or an EAP-IG-style JSON). Bad input ends in one line naming the option
and the fix, exit code 2 (click.UsageError, which orchestrator.cli turns into that line)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from circuitry.orchestrator.console import quiet_option, threads_option
from circuitry.workers.names import ABLATIONS, CIRCUIT_METRICS, DEFAULT_ABLATION, DEFAULT_ORDER, METHODS, ORDERS, edge_count


def _load_data(path: str) -> dict:
    import torch

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
@click.option("--metric", type=click.Choice(CIRCUIT_METRICS), default=None,
              help="The circuit metric (default: the task's, mse or kl); logit_diff (classifiers): the drop of the "
                   "predicted class's logit minus the mean other logit, as a fraction of the full model's.")
@click.option("--top-k", type=click.IntRange(min=0), default=None, help="Score methods: keep the k edges of largest |score|.")
@click.option("--edge-fraction", type=click.FloatRange(0, 1), default=None, help="Score methods: keep this fraction of edges.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None, help="torch.save'd dict: clean, corrupt[, labels].")
@click.option("--export", "export", type=click.Choice(["graphml", "eap-ig", "transformer-lens"]), default=None,
              help="Also write graphml: circuit.graphml (networkx, Gephi, Cytoscape), or eap-ig: graph_eap_ig.json, "
                   "EAP-IG's node/edge/score layout (EAP-IG's own Graph.from_json cannot load it: it only "
                   "builds transformer graphs; for a transformer checkpoint it loads), or transformer-lens "
                   "(transformer checkpoints): model_transformer_lens.pt, a HookedTransformer state dict.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Corruption pairing seed (the examples come from the model's own training seed).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="mnist: folder of the IDX files (default: the folder recorded at training, else $CIRCUITRY_MNIST_DIR).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for circuit.parquet etc.")
@click.option("--force", is_flag=True, help="Replace the run already in --out (else a folder holding one is refused).")
@threads_option
@quiet_option
def discover_cmd(model_path, method, threshold, target_f, order, ablation, output, metric, top_k, edge_fraction,
                 data_path, export, seed, data_dir, out, force, threads, quiet):
    """Find the circuit of a trained model (ACDC, exact ablation scores, EAP, EAP-IG)."""
    from circuitry.orchestrator.cli_transformer import discover_transformer_cmd
    from circuitry.orchestrator.console import DiscoveryBar, callback, show_progress, use_threads
    from circuitry.orchestrator.outdir import check_out, staged
    from circuitry.tasks.base import TaskDataError
    from circuitry.workers.discover import (DiscoverConfig, DiscoveryInputError, export_eap_ig, find_circuit,
                                            write_discovery)
    from circuitry.workers.export import export_graphml
    from circuitry.workers.model import TRANSFORMER_FORMAT, CheckpointError, load_checkpoint

    if threshold is not None and not threshold >= 0:
        raise click.BadParameter(f"must be >= 0, got {threshold}; tau is a metric increase", param_hint="--threshold")
    if target_f is not None and not 0 < target_f <= 1:
        raise click.BadParameter(f"must be in (0, 1], got {target_f}; it is a faithfulness f", param_hint="--target-f")
    data = _load_data(data_path) if data_path else None
    try:  # either format, checked field by field alike (workers.model.check_checkpoint)
        ckpt = load_checkpoint(model_path)
    except CheckpointError as e:
        raise click.BadParameter(str(e), param_hint="--model") from None
    if ckpt["format"] == TRANSFORMER_FORMAT:  # the head-level graph
        if metric is not None:
            raise click.BadParameter("a transformer's discovery uses its task's metric: drop --metric",
                                     param_hint="--metric")
        out_dir = check_out(out, force)
        use_threads(threads)
        return discover_transformer_cmd(ckpt, method, threshold, target_f, order, ablation, output, top_k,
                                        edge_fraction, data, export, seed, out_dir)
    if export == "transformer-lens":
        raise click.BadParameter("transformer-lens exports transformer checkpoints only", param_hint="--export")
    out_dir = check_out(out, force)
    use_threads(threads)
    data_dir = data_dir or ckpt.get("data_dir") or os.environ.get("CIRCUITRY_MNIST_DIR")
    if data_dir:  # the task reads its folder from the environment (tasks.mnist)
        os.environ["CIRCUITRY_MNIST_DIR"] = data_dir
    config = DiscoverConfig(method, threshold, top_k, edge_fraction, target_f, order, ablation, output, seed,
                            metric=metric)
    try:
        n_edges = edge_count(ckpt["shape"]) if "shape" in ckpt else None
        with DiscoveryBar(n_edges, f"{ckpt['task']} {method}", show_progress(quiet)) as bar:
            d = find_circuit(ckpt, config, data=data, progress=callback(bar))
    except DiscoveryInputError as e:
        raise click.BadParameter(str(e), param_hint=e.option) from None
    except TaskDataError as e:
        raise click.BadParameter(f"{str(e).splitlines()[0]}; give the folder with --data-dir",
                                 param_hint="--data-dir") from None
    with staged(out_dir) as tmp:
        write_discovery(d, tmp, ckpt)
        if export == "graphml":
            export_graphml(d.table, ckpt, tmp / "circuit.graphml")
        elif export == "eap-ig":
            export_eap_ig(d, tmp / "graph_eap_ig.json")
    click.echo(result_line(d.summary, method, ablation, out_dir))
    if target_f is not None:
        click.echo(_target_line(d.summary))
    for warning in circuit_warnings(d.summary, target_f):
        click.echo(f"warning: {warning}", err=True)


def result_line(s: dict, method: str, ablation: str, out_dir: Path) -> str:
    """The one line a discovery prints: size, faithfulness on both example sets, the full model's
    accuracy on a classifier, whether the kept edges reach exactly the inputs each output depends
    on (tasks that define the dependencies), time, where the files are."""
    ev = s["evaluation"]
    accuracy = f", accuracy {ev['full_accuracy']:.3g} -> circuit {ev['circuit_accuracy']:.3g}" \
        if ev.get("full_accuracy") is not None and ev.get("circuit_accuracy") is not None else ""
    deps = f", dependencies match: {'yes' if s['dependencies_match'] else 'NO'}" if "dependencies_match" in s else ""
    return (f"{s['task']} {method} ({ablation}): {s['n_edges_kept']}/{s['n_edges_total']} edges kept, "
            f"faithfulness {s['faithfulness']:.3g} ({s['n_discovery']} examples), held out "
            f"{ev['faithfulness']:.3g} ({s['n_evaluation']}){accuracy}{deps}, {s['discovery_seconds']:.2f}s "
            f"-> {out_dir / 'circuit.parquet'}")


def circuit_warnings(s: dict, target_f: float | None) -> list[str]:
    """An empty circuit, or one no better than the ablated model (f <= 0), says the threshold
    does not suit this model and method (a tau means different things per method); --target-f
    picks the circuit by the faithfulness wanted instead."""
    hint = "" if target_f is not None else "; pick the circuit by faithfulness instead: --target-f 0.9"
    if s["n_edges_kept"] == 0:
        return [f"the circuit is empty (0/{s['n_edges_total']} edges){hint}"]
    if not s["faithfulness"] > 0:
        return [f"faithfulness {s['faithfulness']:.3g} <= 0: the circuit explains none of the model's behaviour{hint}"]
    return []


def _target_line(s: dict) -> str:
    """The search's answer, with taus at full precision (repr), so that --threshold can repeat it."""
    reached = "reached" if s["target_reached"] else "NOT reached"
    if s["tau_found"] is not None:
        return (f"target f >= {s['target_f']} {reached}: tau_found {s['tau_found']!r}, tau_above {s['tau_above']!r} "
                f"({len(s['search'])} ACDC runs)")
    return f"target f >= {s['target_f']} {reached}: top-k {s['top_k']} ({len(s['search'])} circuits tried)"
