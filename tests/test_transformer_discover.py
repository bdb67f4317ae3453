"""`circuitry discover` on a transformer checkpoint: circuit.parquet in EAP-IG's names, summary.json
with the MLP path's figures and induction's ground truth, the EAP-IG graph export, bad input."""
import json

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from circuitry.orchestrator.cli_discover import discover_cmd
from circuitry.tasks import get_task
from circuitry.workers.transformer import Transformer, save


@pytest.fixture(scope="module")
def induction_model(tmp_path_factory):
    torch.manual_seed(0)
    model = Transformer(get_task("induction").transformer)
    path = tmp_path_factory.mktemp("m") / "model.pt"
    save(model.to_checkpoint("induction", "vanilla", 0, {"seed": 0}), path)
    return path


@pytest.fixture(autouse=True)
def small_and_one_thread(monkeypatch):
    """One torch thread: the tensors are small, and threads only contend on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(args):
    return CliRunner().invoke(discover_cmd, [str(a) for a in args])


def test_acdc_writes_head_level_circuit(induction_model, tmp_path):
    r = _run(["--model", induction_model, "--method", "acdc", "--threshold", "1e-3", "--out", tmp_path / "d",
              "--export", "eap-ig"])
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "d" / "circuit.parquet")
    assert t.column_names == ["sender", "receiver", "edge", "score", "in_circuit"]
    rows = t.to_pydict()
    assert len(rows["edge"]) == 29  # 2 layers x 2 heads, attention-only
    assert rows["edge"][:3] == ["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>"]
    assert rows["edge"][-1] == "a1.h1->logits"
    assert t.schema.metadata[b"method"] == b"acdc"
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert s["n_edges_total"] == 29 and s["n_edges_kept"] == sum(rows["in_circuit"])
    assert s["n_discovery"] == s["n_evaluation"] == 1000  # the test split, in two halves
    gt = s["ground_truth"]
    assert gt["previous_token_head"] in ("a0.h0", "a0.h1") and gt["induction_head"] in ("a1.h0", "a1.h1")
    assert gt["recovered"] == bool(gt["k_composition"])
    assert "faithfulness" in s["evaluation"] and "circuit_accuracy" in s
    g = json.loads((tmp_path / "d" / "graph_eap_ig.json").read_text())
    assert set(g) == {"cfg", "nodes", "edges"} and len(g["edges"]) == 29
    assert g["cfg"] == {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 32}


def test_score_method_at_target_f(induction_model, tmp_path):
    r = _run(["--model", induction_model, "--method", "eap-ig", "--target-f", "0.8", "--out", tmp_path / "e"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert s["target_f"] == 0.8 and s["top_k"] is not None and len(s["curve_faithfulness"]) == 10
    if s["target_reached"]:
        assert s["faithfulness"] >= 0.8


def test_acdc_at_target_f_keeps_the_sparsest_circuit_it_tried(induction_model, tmp_path):
    """f and the edge count are not monotone in tau on a head graph: whichever probe the bisection
    ends on, the circuit written is the sparsest one tried that reaches the target (workers.target)."""
    r = _run(["--model", induction_model, "--method", "acdc", "--target-f", "0.9", "--out", tmp_path / "t"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    meeting = [p for p in s["search"] if p["f"] >= 0.9]
    if meeting:
        assert s["target_reached"] and s["n_edges_kept"] == min(p["edges"] for p in meeting)
    else:
        assert not s["target_reached"] and s["faithfulness"] == max(p["f"] for p in s["search"])
    assert s["tau_found"] in [p["tau"] for p in s["search"]]


def test_transformer_bad_input_exits_2(induction_model, tmp_path):
    r = _run(["--model", induction_model, "--method", "acdc", "--threshold", "0.1", "--output", "1", "--out", tmp_path / "x"])
    assert r.exit_code == 2 and "--output" in r.output
    r = _run(["--model", induction_model, "--method", "acdc", "--threshold", "0.1", "--export", "graphml", "--out", tmp_path / "x"])
    assert r.exit_code == 2 and "--export" in r.output


def induction_data(n=40):
    split = get_task("induction").make_data(0)
    x = split.x_test[:n]
    return {"clean": x, "corrupt": x.roll(1, 0), "labels": split.y_test[:n]}


def test_data_file_of_sequences_is_the_discovery_and_evaluation_examples(induction_model, tmp_path):
    """--data on a transformer: its first half finds the circuit, its second grades it, exactly
    as the same examples would through workers.transformer_discover directly."""
    from circuitry.workers.transformer import load
    from circuitry.workers.transformer_discover import discover_transformer

    data = induction_data()
    torch.save(data, tmp_path / "data.pt")
    r = _run(["--model", induction_model, "--method", "eap", "--top-k", "6", "--data", tmp_path / "data.pt",
              "--out", tmp_path / "d"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert (s["examples_from"], s["n_discovery"], s["n_evaluation"]) == ("--data", 20, 20)
    assert 0 <= s["full_accuracy"] <= 1 and "faithfulness" in s["evaluation"]
    # other examples give other scores: the file's examples are the ones used
    default = discover_transformer(load(induction_model), "eap", top_k=6).summary
    assert default["examples_from"] == "test split" and default["faithfulness"] != s["faithfulness"]
    direct = discover_transformer(load(induction_model), "eap", top_k=6, data=data).summary
    assert direct["faithfulness"] == s["faithfulness"]


@pytest.mark.parametrize("change, why", [
    (lambda d: {**d, "clean": d["clean"] + 1000}, "token ids in [0, 30)"),
    (lambda d: {**d, "clean": d["clean"][:, :5], "corrupt": d["corrupt"][:, :5]}, "with T in"),
    (lambda d: {**d, "corrupt": d["corrupt"][:, :-1]}, "'corrupt' must have the shape of 'clean'"),
    (lambda d: {**d, "labels": d["labels"][:, :2]}, "'labels' must be a tensor [N, 9"),
    (lambda d: {"clean": d["clean"]}, "expected a dict with tensors 'clean', 'corrupt'"),
])
def test_a_bad_data_file_for_a_transformer_is_one_line_naming_data(induction_model, tmp_path, change, why):
    torch.save(change(induction_data()), tmp_path / "data.pt")
    r = _run(["--model", induction_model, "--method", "eap", "--top-k", "6", "--data", tmp_path / "data.pt",
              "--out", tmp_path / "d"])
    assert r.exit_code == 2 and "--data" in r.output and why in r.output, r.output
    assert not (tmp_path / "d" / "summary.json").exists()


def test_transformer_lens_export_file(induction_model, tmp_path):
    r = _run(["--model", induction_model, "--method", "eap", "--top-k", "5", "--export", "transformer-lens",
              "--out", tmp_path / "t"])
    assert r.exit_code == 0, r.output
    d = torch.load(tmp_path / "t" / "model_transformer_lens.pt", weights_only=True)
    assert d["cfg"]["attn_only"] and d["cfg"]["n_heads"] == 2 and d["cfg"]["normalization_type"] == "LN"
    assert torch.equal(d["state_dict"]["blocks.1.attn.W_K"], torch.load(induction_model, weights_only=True)["weights"]["blocks.1.attn.W_K"])


def test_regression_transformer_mse(tmp_path):
    torch.manual_seed(1)
    task = get_task("incontext")
    path = tmp_path / "model.pt"
    save(Transformer(task.transformer).to_checkpoint("incontext", "vanilla", 0, {"seed": 0}), path)
    r = _run(["--model", path, "--method", "acdc", "--threshold", "1e-4", "--ablation", "mean", "--out", tmp_path / "d"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert s["metric"] == "mse" and s["ablation"] == "mean" and "circuit_accuracy" not in s
    r = _run(["--model", path, "--method", "acdc", "--threshold", "1e-4", "--export", "transformer-lens", "--out", tmp_path / "e"])
    assert r.exit_code == 2 and "token ids" in r.output  # the circuit is written, the export refused


def test_sweep_entry_point_dispatches_on_the_format(induction_model):
    """What a sweep's discover job calls (find_circuit, discovery_files) takes a transformer checkpoint."""
    from circuitry.workers.discover import DiscoverConfig, discovery_files, find_circuit, summary_figures

    ckpt = torch.load(induction_model, weights_only=True)
    d = find_circuit(ckpt, DiscoverConfig("eap", top_k=3))
    files = discovery_files(d, ckpt)
    assert list(files) == ["circuit.parquet", "summary.json"]
    assert json.loads(files["summary.json"])["n_edges_kept"] == 3
    assert "eval_faithfulness" in summary_figures(d.summary)
