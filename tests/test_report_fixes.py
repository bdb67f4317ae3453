"""Report bugs found by a new user, one test each: the networks figure with ACDC at a target f,
a sweep stopped before any job finished, memory in MiB, no `nan` in a key column, and a
discovery-time figure with intervals and readable labels."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from circuitry.orchestrator.cli import main  # noqa: E402
from circuitry.orchestrator.recorder import write_parquet  # noqa: E402
from circuitry.orchestrator.report import write_report  # noqa: E402
from circuitry.orchestrator.report_tables import DISCOVERY, PROFILE, load_jobs, row_keys, table  # noqa: E402
from tests.test_report import table_rows  # noqa: E402

torch.set_num_threads(1)


def test_report_on_a_sweep_stopped_before_any_job_finished(tmp_path, capsys):
    write_parquet([], tmp_path / "jobs.parquet")  # what the driver writes at its start
    report, pictures = write_report(tmp_path)
    assert "0 trained models, 0 circuits" in report.read_text() and pictures == []
    main(["report", str(tmp_path), "--no-mlflow"])
    assert "wrote" in capsys.readouterr().out


def rows_for_tables():
    rows = []
    for seed, peak in ((0, 6.35e8), (1, 6.45e8)):
        tid = f"t{seed}"
        rows.append({"job_id": tid, "kind": "train", "status": "finished", "task": "moons", "regime": "bimt",
                     "seed": seed, "peak_memory_bytes": peak, "train_seconds": 1.0})
        for target_f, threshold in ((0.9, None), (None, 0.01)):
            rows.append({"job_id": f"d{tid}{target_f}", "kind": "discover", "status": "finished", "model_id": tid,
                         "task": "moons", "regime": "bimt", "train_seed": seed, "method": "acdc",
                         "threshold": threshold, "target_f": target_f, "ablation": "resample",
                         "discovery_seconds": 0.5 + seed, "n_edges_kept": 5})
    return rows


def test_memory_in_mib_and_no_nan_in_key_columns(tmp_path):
    write_parquet(rows_for_tables(), tmp_path / "jobs.parquet")
    train, discover = load_jobs(tmp_path)
    profile = table_rows(table(train, ["task", "regime"], PROFILE))
    assert profile[0]["peak memory MiB"].startswith("610 ±")  # mean of 605.6 and 615.1 MiB
    assert not any("e+08" in v for v in profile[0].values())
    keys = ["task", "regime"] + row_keys(discover)
    rows = table_rows(table(discover, keys, DISCOVERY))
    assert {(r["threshold"], r["target_f"]) for r in rows} == {("0.01", "-"), ("-", "0.9")}
    assert not any("nan" in v for r in rows for v in r.values())


def test_discovery_time_has_intervals_and_plain_labels(tmp_path):
    from circuitry.orchestrator.report_figures import draw_discovery_time

    write_parquet(rows_for_tables(), tmp_path / "jobs.parquet")
    _, discover = load_jobs(tmp_path)
    fig, ax = plt.subplots()
    draw_discovery_time(ax, discover, [("moons", "acdc")])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["moons\nacdc"]
    from matplotlib.container import BarContainer, ErrorbarContainer

    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    assert bars.errorbar is not None and any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    segments = bars.errorbar.lines[2][0].get_segments()  # the interval over the two seeds
    assert segments[0][1][1] - segments[0][0][1] > 0
    assert ax.get_yscale() == "linear"
    plt.close(fig)


def test_networks_figure_shows_the_acdc_circuit_found_at_a_target_f(tmp_path, monkeypatch):
    import circuitry
    from circuitry.orchestrator import report_figures
    from circuitry.orchestrator.store import JobResult, JobStore
    from circuitry.workers import draw
    from circuitry.workers.discover import discovery_files
    from circuitry.workers.outputs import training_files

    result = circuitry.train(circuitry.TrainConfig(task="independence", regime="bimt", steps=60, width=6))
    d = circuitry.discover(result.checkpoint, "acdc", target_f=0.9)
    store = JobStore(tmp_path)  # the report reads job folders the driver signed, by id
    store.prepare()
    t_id, d_id = "0" * 16, "1" * 16
    store.commit(t_id, JobResult({"kind": "train", "status": "finished"}, training_files(result, pictures=False)))
    store.commit(d_id, JobResult({"kind": "discover", "status": "finished"},
                                 discovery_files(d, result.checkpoint, pictures=False)))
    train = pd.DataFrame([{"job_id": t_id, "task": "independence", "regime": "bimt", "seed": 0}])
    discover = pd.DataFrame([{"job_id": d_id, "model_id": t_id, "method": "acdc", "threshold": float("nan"),
                              "target_f": 0.9, "n_edges_kept": d.summary["n_edges_kept"]}])
    titles = []
    real = draw.draw_network_on
    monkeypatch.setattr(draw, "draw_network_on", lambda ax, ckpt, masks, title: (titles.append((title, masks)),
                                                                                   real(ax, ckpt, masks, title)))
    assert report_figures.figure_networks(tmp_path, "independence", train, discover, tmp_path) is not None
    (title, masks), = titles
    assert f"ACDC f>=0.9: {d.summary['n_edges_kept']} edges" in title and masks is not None
