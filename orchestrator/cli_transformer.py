"""`circuitry discover` on a `circuitry.transformer/1` checkpoint: the head-level graph
(workers.transformer_discover). orchestrator.cli_discover hands such checkpoints here; bad input
ends in one line naming the option, exit 2, as there."""
from __future__ import annotations

from pathlib import Path

import click

from circuitry.workers.discover import DiscoveryInputError


def discover_transformer_cmd(ckpt: dict, method, threshold, target_f, order, ablation, output, top_k, edge_fraction,
                             data, export, seed, out) -> None:
    from circuitry.workers.transformer_discover import (discover_transformer, export_eap_ig_graph,
                                                        write_transformer_discovery)

    if output is not None:
        raise click.BadParameter("a transformer's circuit covers the task's scored positions; drop --output",
                                 param_hint="--output")
    if export == "graphml":
        raise click.BadParameter("graphml is the MLP neuron graph's export; use --export eap-ig or transformer-lens",
                                 param_hint="--export")
    try:
        d = discover_transformer(ckpt, method, threshold, ablation=ablation, data=data, seed=seed, top_k=top_k,
                                 edge_fraction=edge_fraction, target_f=target_f, order=order)
    except DiscoveryInputError as e:
        raise click.BadParameter(str(e), param_hint=e.option) from None
    out_dir = write_transformer_discovery(d, out)
    if export == "eap-ig":
        export_eap_ig_graph(d, Path(out_dir) / "graph_eap_ig.json")
    elif export == "transformer-lens":
        from circuitry.workers.transformer_lens_export import ExportError, export_transformer_lens

        try:
            export_transformer_lens(ckpt, Path(out_dir) / "model_transformer_lens.pt")
        except ExportError as e:
            raise click.BadParameter(f"{e}; the circuit was written, drop --export transformer-lens",
                                     param_hint="--export") from None
    s = d.summary
    line = (f"{s['task']} {method} ({ablation}, heads): {s['n_edges_kept']}/{s['n_edges_total']} edges kept, "
            f"faithfulness {s['faithfulness']:.3g} ({s['n_discovery']} examples), held out "
            f"{s['evaluation']['faithfulness']:.3g} ({s['n_evaluation']}), {s['discovery_seconds']:.2f}s "
            f"-> {out_dir / 'circuit.parquet'}")
    click.echo(line)
    gt = s.get("ground_truth")
    if gt and "recovered" in gt:
        click.echo(f"ground truth: {'recovered' if gt['recovered'] else 'not recovered'} (k-composition kept: "
                   f"{', '.join(gt['k_composition']) or 'none'}; top previous-token head {gt['previous_token_head']}, "
                   f"top induction head {gt['induction_head']})")
