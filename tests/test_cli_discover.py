"""`circuitry discover`: files with the right schema; bad input -> one line naming the option, exit 2."""
import json

import click
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from circuitry import tasks
from circuitry.orchestrator.cli_discover import discover_cmd

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.pt"
    torch.save(tasks.get_task("planted_teacher").teacher(), path)
    return path


def run_main(argv, capsys):
    """The console script's behaviour: orchestrator.cli.main when it exists, else the same
    one-line/exit-2 contract applied to the command here."""
    try:
        from circuitry.orchestrator.cli import main
    except ImportError:  # the group is another module's; test the command alone
        main = None
    with pytest.raises(SystemExit) as e:
        if main is not None:
            main(["discover", *argv])
        else:
            try:
                discover_cmd.main(args=argv, standalone_mode=False)
            except click.UsageError as err:
                click.echo(f"error: {err.format_message()}", err=True)
                raise SystemExit(2)
            raise SystemExit(0)
    return e.value.code, capsys.readouterr()


def test_writes_files_with_schema(model, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(discover_cmd, ["--model", str(model), "--method", "acdc", "--threshold", "1e-4",
                                          "--out", str(out), "--export", "eap-ig"])
    assert r.exit_code == 0, r.output
    t = pq.read_table(out / "circuit.parquet")
    assert t.schema.names == ["src", "dst", "src_layer", "src_pos", "dst_layer", "dst_pos", "weight", "score", "in_circuit"]
    assert t.schema.metadata[b"method"] == b"acdc"
    s = json.loads((out / "summary.json").read_text())
    assert s["n_edges_kept"] == sum(t.column("in_circuit").to_pylist())
    assert s["edge_roc_auc"] >= 0.95
    assert (out / "circuit.png").exists() and (out / "graph_eap_ig.json").exists()


def test_score_method_with_user_data(model, tmp_path):
    task = tasks.get_task("planted_teacher")
    split = task.make_data(1)
    data = tmp_path / "d.pt"
    torch.save({"clean": split.x_test[:100], "corrupt": split.x_test[100:200], "labels": split.y_test[:100]}, data)
    r = CliRunner().invoke(discover_cmd, ["--model", str(model), "--method", "eap", "--top-k", "50",
                                          "--data", str(data), "--ablation", "mean", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["n_edges_kept"] == 50 and s["ablation"] == "mean"
    assert s["n_discovery"] == s["n_examples"] == 50 and s["n_evaluation"] == 50 and s["data_seed"] is None


def bad_inputs(model, tmp):
    truncated = tmp / "trunc.pt"
    truncated.write_bytes(model.read_bytes()[:200])
    other = tmp / "other.pt"
    torch.save({"format": "something/2", "weights": []}, other)
    mismatch = tmp / "mismatch.pt"
    ck = tasks.get_task("planted_teacher").teacher()
    ck["task"] = "independence"  # 6 inputs, 3 outputs: not independence's 4 -> 2
    torch.save(ck, mismatch)
    bad_data = tmp / "bad_data.pt"
    torch.save({"clean": torch.zeros(5, 2), "corrupt": torch.zeros(5, 2)}, bad_data)
    not_dict = tmp / "list.pt"
    torch.save([torch.zeros(3)], not_dict)
    m = ["--model", str(model)]
    return [
        (["--model", str(tmp / "missing.pt"), "--method", "acdc", "--threshold", "1"], "--model"),
        (["--model", str(truncated), "--method", "acdc", "--threshold", "1"], "--model"),
        (["--model", str(other), "--method", "acdc", "--threshold", "1"], "--model"),
        (["--model", str(mismatch), "--method", "acdc", "--threshold", "1"], "--model"),
        ([*m, "--method", "magic", "--threshold", "1"], "--method"),
        ([*m, "--method", "acdc", "--threshold", "1", "--ablation", "noise"], "--ablation"),
        ([*m, "--method", "acdc", "--threshold=-0.5"], "--threshold"),
        ([*m, "--method", "acdc"], "--threshold"),
        ([*m, "--method", "exact"], "--threshold"),
        ([*m, "--method", "acdc", "--threshold", "1", "--data", str(bad_data)], "--data"),
        ([*m, "--method", "acdc", "--threshold", "1", "--data", str(not_dict)], "--data"),
        ([*m, "--method", "acdc", "--threshold", "1", "--data", str(tmp / "nope.pt")], "--data"),
        ([*m, "--method", "acdc", "--threshold", "1", "--output", "7"], "--output"),
        ([*m, "--method", "acdc", "--threshold", "1", "--target-f", "0.95"], "--threshold"),
        ([*m, "--method", "acdc", "--target-f", "1.5"], "--target-f"),
        ([*m, "--method", "acdc", "--target-f", "0"], "--target-f"),
        ([*m, "--method", "eap", "--top-k", "5", "--target-f", "0.9"], "--threshold"),
        ([*m, "--method", "exact", "--target-f", "0.9", "--order", "descending"], "--order"),
        ([*m, "--method", "acdc", "--threshold", "1", "--order", "sideways"], "--order"),
    ]


def test_bad_inputs_exit_2_with_one_line(model, tmp_path, capsys):
    for argv, option in bad_inputs(model, tmp_path):
        code, cap = run_main([*argv, "--out", str(tmp_path / "o")], capsys)
        lines = cap.err.strip().splitlines()
        assert code == 2, (argv, cap.err)
        assert len(lines) == 1 and option in lines[0], (argv, cap.err)
        assert not (tmp_path / "o" / "summary.json").exists()


def graphml_matches_parquet(out, ckpt):
    """circuit.graphml loaded by networkx == circuit.parquet's kept edges, weights and scores, and
    every neuron with the checkpoint's coordinates."""
    import networkx as nx

    g = nx.read_graphml(out / "circuit.graphml")
    t = pq.read_table(out / "circuit.parquet").to_pandas()
    kept = t[t.in_circuit]
    assert g.is_directed() and g.number_of_edges() == len(kept) > 0
    assert set(g.edges) == set(zip(kept.src, kept.dst))
    for row in kept.itertuples():
        e = g.edges[row.src, row.dst]
        assert e["weight"] == pytest.approx(float(row.weight), rel=1e-6)
        assert e["score"] == pytest.approx(row.score, rel=1e-12)
    assert g.number_of_nodes() == sum(ckpt["shape"])
    for layer, coords in enumerate(ckpt["coordinates"]):
        for pos in (0, len(coords) - 1):
            n = g.nodes[f"L{layer}.{pos}"]
            c = coords[pos].reshape(-1).tolist()
            assert (n["layer"], n["position"]) == (layer, pos)
            assert n["coordinate_x"] == pytest.approx(c[0]) and n.get("coordinate_y", c[-1]) == pytest.approx(c[-1])
    in_circuit = {n for e in g.edges for n in e}
    assert {n for n, a in g.nodes(data=True) if a["in_circuit"]} == in_circuit
    return g


def test_graphml_export_loads_in_networkx(model, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(discover_cmd, ["--model", str(model), "--method", "acdc", "--threshold", "1e-4",
                                          "--out", str(out), "--export", "graphml"])
    assert r.exit_code == 0, r.output
    g = graphml_matches_parquet(out, torch.load(model, weights_only=True))
    assert g.graph["method"] == "acdc" and g.graph["task"] == "planted_teacher"
    assert g.nodes["L0.0"]["feature"] >= 0 and g.nodes["L1.0"]["feature"] == -1


def test_graphml_export_of_a_2d_sheet(tmp_path):
    from circuitry.workers.outputs import write_training
    from circuitry.workers.train import TrainConfig, train

    write_training(train(TrainConfig(task="digits", regime="bimt", steps=3, seed=0)), tmp_path / "m")
    out = tmp_path / "out"
    r = CliRunner().invoke(discover_cmd, ["--model", str(tmp_path / "m" / "model.pt"), "--method", "eap",
                                          "--top-k", "40", "--out", str(out), "--export", "graphml"])
    assert r.exit_code == 0, r.output
    ckpt = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    g = graphml_matches_parquet(out, ckpt)
    assert g.number_of_edges() == 40 and "coordinate_y" in g.nodes["L1.5"]


def test_metric_logit_diff_on_a_classifier_and_refused_on_a_regression(model, tmp_path, capsys):
    from circuitry.workers.train import TrainConfig, train
    clf = tmp_path / "clf.pt"
    torch.save(train(TrainConfig("two_moons", "vanilla", 30, 0, device="cpu")).checkpoint, clf)
    out = tmp_path / "out"
    r = CliRunner().invoke(discover_cmd, ["--model", str(clf), "--method", "acdc", "--target-f", "0.9",
                                          "--metric", "logit_diff", "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["metric"] == "logit_diff" and s["faithfulness"] >= 0.9 and s["n_edges_kept"] < s["n_edges_total"]
    code, cap = run_main(["--model", str(model), "--method", "acdc", "--threshold", "0.01", "--metric", "logit_diff",
                          "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "--metric" in cap.err and "needs a classifier" in cap.err
