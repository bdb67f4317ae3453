"""workers.discover: the orchestrator's entry points, the files they write, ground truth."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from circuitry import tasks
from circuitry.workers.acdc import exact_scores
from circuitry.workers.discover import (DiscoverConfig, DiscoveryInputError, discover, discovery_from_scores,
                                        export_eap_ig, prepare, write_discovery)
from circuitry.workers.graph import Graph
from circuitry.workers.model import CoordMLP

torch.set_num_threads(1)

SCHEMA = [("src", "string"), ("dst", "string"), ("src_layer", "int32"), ("src_pos", "int32"),
          ("dst_layer", "int32"), ("dst_pos", "int32"), ("weight", "float"), ("score", "double"),
          ("in_circuit", "bool")]
META = {"method", "threshold", "ablation", "metric", "task", "regime", "seed", "model_id"}


@pytest.fixture(scope="module")
def teacher():
    return tasks.get_task("planted_teacher").teacher()


@pytest.mark.parametrize("method,kw", [("acdc", {"threshold": 1e-4}), ("exact", {"threshold": 1e-4}),
                                       ("eap-ig", {"top_k": 50})])
def test_planted_teacher_edges_are_found(teacher, method, kw):
    d = discover(teacher, method, **kw)
    s = d.summary
    assert s["edge_roc_auc"] >= 0.95
    assert s["dependencies_match"]
    assert s["faithfulness"] > 0.95
    assert s["n_edges_total"] == 6 * 12 + 12 * 12 + 12 * 3


def test_teacher_acdc_circuit_is_the_teacher_edge_set(teacher):
    d = discover(teacher, "acdc", 1e-6)
    found = {(l, i, j) for l, m in enumerate(d.masks) for j, i in torch.nonzero(m).tolist()}
    assert found == tasks.teacher_edges()


def test_student_is_matched_to_teacher_before_comparing(teacher):
    """A 'student' that is the teacher with its hidden neurons shuffled: matching undoes it."""
    student = {**teacher, "regime": "vanilla", "weights": list(teacher["weights"]), "biases": list(teacher["biases"])}
    g = torch.Generator().manual_seed(5)
    perms = [torch.arange(6), torch.randperm(12, generator=g), torch.randperm(12, generator=g), torch.arange(3)]
    for l in range(3):
        student["weights"][l] = teacher["weights"][l][perms[l + 1]][:, perms[l]]
        student["biases"][l] = teacher["biases"][l][perms[l + 1]]
    d = discover(student, "exact", top_k=len(tasks.teacher_edges()))
    assert d.summary["edge_roc_auc"] >= 0.99
    assert d.summary["edge_precision"] == 1.0 and d.summary["edge_recall"] == 1.0


def test_table_schema_and_files(teacher, tmp_path):
    d = discover(teacher, "acdc", 1e-4)
    write_discovery(d, tmp_path, teacher)
    t = pq.read_table(tmp_path / "circuit.parquet")
    assert [(f.name, str(f.type)) for f in t.schema] == SCHEMA
    meta = {k.decode(): v.decode() for k, v in t.schema.metadata.items()}
    assert META <= set(meta) and meta["method"] == "acdc" and meta["metric"] == "mse"
    assert float(meta["threshold"]) == 1e-4 and meta["task"] == "planted_teacher"
    assert t.num_rows == Graph.from_checkpoint(teacher).n_edges
    # canonical order: layer, dst, src; weights round-trip
    rows = t.to_pydict()
    assert rows["src"][:2] == ["L0.0", "L0.1"] and rows["dst"][:2] == ["L1.0", "L1.0"]
    np.testing.assert_array_equal(np.array(rows["weight"][:72], dtype=np.float32),
                                  teacher["weights"][0].reshape(-1).numpy())
    assert sum(rows["in_circuit"]) == d.summary["n_edges_kept"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("n_edges_total", "n_edges_kept", "edge_sparsity", "n_nodes_kept", "faithfulness",
                "discovery_seconds", "forward_examples", "edges_per_second"):
        assert key in summary
    assert (tmp_path / "circuit.png").stat().st_size > 0
    g = json.loads(export_eap_ig(d, tmp_path / "g.json").read_text())
    assert set(g) == {"cfg", "nodes", "edges"}
    assert len(g["edges"]) == t.num_rows
    assert sum(e["in_graph"] for e in g["edges"].values()) == d.summary["n_edges_kept"]


def test_exact_chunks_assemble_to_the_same_discovery(teacher):
    problem = prepare(teacher, ablation="mean").problem
    E = problem.graph.n_edges
    scores = np.concatenate([exact_scores(problem, a, min(E, a + 37))[0].numpy() for a in range(0, E, 37)])
    one = discover(teacher, "exact", edge_fraction=0.2, ablation="mean")
    np.testing.assert_array_equal(scores, one.table.column("score").to_numpy())
    d = discovery_from_scores(teacher, scores, DiscoverConfig("exact", edge_fraction=0.2, ablation="mean"))
    assert d.table.equals(one.table, check_metadata=True)
    assert d.summary["cpr"] == one.summary["cpr"]
    # at a target faithfulness the chunks pick the same top-k as one pass
    one = discover(teacher, "exact", target_f=0.9, ablation="mean")
    d = discovery_from_scores(teacher, scores, DiscoverConfig("exact", target_f=0.9, ablation="mean"))
    assert d.table.equals(one.table, check_metadata=True) and d.summary["search"] == one.summary["search"]
    assert one.summary["faithfulness"] >= 0.9 and one.summary["top_k"] == one.summary["n_edges_kept"]


def test_user_data_and_classification_figures():
    task = tasks.get_task("two_moons")
    torch.manual_seed(0)
    ckpt = CoordMLP(list(task.shape)).to_checkpoint("two_moons", "random", 0, {})
    split = task.make_data(0)
    data = {"clean": split.x_test[:50], "corrupt": split.x_test[50:100], "labels": split.y_test[:50]}
    for method, kw in [("acdc", {"threshold": 1e-5}), ("eap", {"edge_fraction": 0.3}), ("eap-ig", {"top_k": 20})]:
        d = discover(ckpt, method, data=data, **kw)
        s = d.summary
        # the 50 examples split in two: 25 find the circuit, 25 grade it again
        assert s["metric"] == "kl" and s["n_examples"] == s["n_discovery"] == 25 and s["n_evaluation"] == 25
        assert s["data_seed"] is None and s["examples_from"] == "--data"
        for figures in (s, s["evaluation"]):
            assert 0 <= figures["circuit_accuracy"] <= 1 and figures["logit_gap"] >= 0
            assert figures["normalized_logit_gap"] == pytest.approx(figures["logit_gap"] / figures["empty_logit_gap"])
        if method != "acdc":
            assert len(s["curve_faithfulness"]) == 10 and np.isfinite(s["cmd"])
            assert len(s["evaluation"]["curve_faithfulness"]) == 10
    # the attribution metric needs no labels; accuracies then refer to the full model's predictions
    unlabelled = discover(ckpt, "eap", top_k=3, data={"clean": data["clean"], "corrupt": data["corrupt"]})
    assert unlabelled.summary["full_accuracy"] == 1.0 and "accuracy_reference" in unlabelled.summary
    with pytest.raises(DiscoveryInputError, match="at least 2"):
        discover(ckpt, "acdc", 0.1, data={"clean": data["clean"][:1], "corrupt": data["corrupt"][:1]})
    with pytest.raises(DiscoveryInputError) as e:
        discover(ckpt, "acdc", 0.1, data={"clean": data["clean"][:, :1], "corrupt": data["corrupt"][:, :1]})
    assert e.value.option == "--data"


def test_output_restricted_circuit_uses_only_that_output(teacher):
    d = discover(teacher, "acdc", 1e-4, output=1)
    assert not d.masks[2][[0, 2]].any()  # edges into the other outputs are not in the circuit
    s = d.summary
    assert s["dependencies_match"] and s["dependencies_found"][1] == [2, 3]


def test_bad_selection_is_refused(teacher):
    with pytest.raises(DiscoveryInputError, match="threshold"):
        discover(teacher, "acdc")
    with pytest.raises(DiscoveryInputError):
        discover(teacher, "exact", 0.1, top_k=3)
    with pytest.raises(DiscoveryInputError) as e:
        discover(teacher, "magic", 0.1)
    assert e.value.option == "--method"
    with pytest.raises(DiscoveryInputError) as e:
        discover(teacher, "acdc", 0.1, ablation="noise")
    assert e.value.option == "--ablation"


def test_graph_api_attribute_and_evaluate(teacher):
    from circuitry.workers.discover import attribute, evaluate
    from circuitry.workers.graph import Graph
    task = tasks.get_task("planted_teacher")
    split = task.make_data(0)
    g = Graph.from_checkpoint(teacher)
    assert g.weights[0].dtype == torch.float64
    x, xc = split.x_test, task.corrupt(split.x_test, 0)
    res = attribute(g, x, xc, method="acdc", metric="mse", threshold=1e-6)
    found = {(l, i, j) for l, m in enumerate(res.masks) for j, i in torch.nonzero(m).tolist()}
    assert found == tasks.teacher_edges()
    out = evaluate(g, res.masks, x, xc, metric="mse")
    assert out["faithfulness"] > 0.999 and out["n_edges_kept"] == len(found)
    eap = attribute(g, x, xc, method="eap", metric="mse")
    zero_w = [w == 0 for w in g.weights]
    assert all(bool((s[z] == 0).all()) for s, z in zip(eap.scores, zero_w))


def test_discover_device_option(teacher):
    from circuitry.workers.device import DeviceError, pick_device
    d = discover(teacher, "acdc", 1e-4, device="cpu")
    assert d.summary["device"] == "cpu"
    auto = discover(teacher, "acdc", 1e-4)  # "auto": the GPU if torch sees one
    assert all(torch.equal(a, b) for a, b in zip(d.masks, auto.masks))
    problem = prepare(teacher).problem
    assert torch.equal(exact_scores(problem.to("cpu"), stop=40)[0], exact_scores(problem.to(pick_device("auto")), stop=40)[0]) \
        or not torch.cuda.is_available()
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no GPU"):
            pick_device("cuda")
    with pytest.raises(DeviceError, match="unknown device 'tpu-9'"):
        pick_device("tpu-9")
