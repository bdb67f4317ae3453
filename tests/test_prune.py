"""The prune regime: a vanilla net magnitude-pruned to the matched BIMT net's weight count, then
fine-tuned with the pruned weights held at zero; its place in a sweep's job graph."""
import json

import pandas as pd
import pytest
import torch

from circuitry.orchestrator.cli import main
from circuitry.orchestrator.recorder import read_records
from circuitry.orchestrator.report import write_report
from circuitry.orchestrator.scheduler import Scheduler
from circuitry.orchestrator.spec import SpecError, parse_spec
from circuitry.workers.model import load_checkpoint, save_checkpoint
from circuitry.workers.profile import weights_above
from circuitry.workers.prune import PruneConfig, layer_counts, magnitude_masks, prune
from circuitry.workers.train import TrainConfig, checkpoint_fit, train


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    vanilla = train(TrainConfig("two_moons", "vanilla", 150, seed=1, width=10, lam=1e-2))
    bimt = train(TrainConfig("two_moons", "bimt", 150, seed=1, width=10, lam=1e-2))
    return vanilla, bimt


def nonzero(ckpt) -> list[int]:
    return [int((w != 0).sum()) for w in ckpt["weights"]]


def test_magnitude_masks_keep_exactly_the_largest_per_layer():
    w = torch.tensor([[0.1, -0.5, 0.3], [0.3, 0.0, -0.2]])
    (m,) = magnitude_masks([w], [3])
    assert m.tolist() == [[0, 1, 1], [1, 0, 0]]  # |0.5|, then the two 0.3s (a tie: both fit)
    (m,) = magnitude_masks([w], [2])
    assert m.tolist() == [[0, 1, 1], [0, 0, 0]]  # a tie at the cut: the lower flat index
    assert layer_counts([w, torch.tensor([[0.004, 0.006]])], 1e-2) == [5, 1]  # > 1% of the network's max 0.5


def test_pruned_net_has_the_matched_count_and_fine_tuning_keeps_zeros_and_lowers_the_loss(pair):
    vanilla, bimt = pair
    result = prune(vanilla.checkpoint, bimt.checkpoint, PruneConfig(finetune_steps=40, log_every=10))
    ckpt, m = result.checkpoint, result.metrics
    counts = layer_counts(bimt.checkpoint["weights"], 1e-2)
    # the target is the BIMT job's own recorded figure, and every layer matches BIMT's count
    assert sum(counts) == bimt.metrics["weights_above_1e-2"] == m["prune_target"] == m["weights_nonzero"]
    assert nonzero(ckpt) == counts and sum(counts) < sum(w.numel() for w in ckpt["weights"]) / 2
    # the kept weights are the vanilla net's largest of each layer, the rest exactly zero
    for w_v, w_p, k in zip(vanilla.checkpoint["weights"], ckpt["weights"], counts):
        kept = w_p != 0
        assert w_v.abs()[kept].min() >= w_v.abs()[~kept].max()
    assert m["train_loss"] < m["pruned_train_loss"]
    assert ckpt["format"] == "circuitry.mlp/1" and ckpt["regime"] == "prune" and ckpt["seed"] == 1
    assert ckpt["config"]["finetune_steps"] == 40 and ckpt["config"]["layer_counts"] == counts
    assert checkpoint_fit(ckpt)["test_loss"] == pytest.approx(m["test_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="vanilla"):
        prune(bimt.checkpoint, bimt.checkpoint, PruneConfig(5))


def test_cli_prunes_two_checkpoints(pair, tmp_path, capsys):
    vanilla, bimt = pair
    save_checkpoint(vanilla.checkpoint, tmp_path / "v.pt")
    save_checkpoint(bimt.checkpoint, tmp_path / "b.pt")
    base = ["train", "--task", "two_moons", "--regime", "prune", "--out", str(tmp_path / "p")]
    with pytest.raises(SystemExit) as e:
        main(base + ["--from-vanilla", str(tmp_path / "v.pt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--match" in err
    with pytest.raises(SystemExit) as e:
        main(base + ["--from-vanilla", str(tmp_path / "b.pt"), "--match", str(tmp_path / "b.pt")])
    assert e.value.code == 2 and "give a vanilla one" in capsys.readouterr().err
    main(base + ["--from-vanilla", str(tmp_path / "v.pt"), "--match", str(tmp_path / "b.pt"), "--finetune-steps", "5"])
    ckpt = load_checkpoint(tmp_path / "p" / "model.pt")
    assert ckpt["regime"] == "prune" and sum(nonzero(ckpt)) == bimt.metrics["weights_above_1e-2"]


def spec_text(root, regimes=("vanilla", "bimt", "prune"), lam=(1e-3, 1e-2), steps=60, extra=""):
    return f"""
[sweep]
name = "p"
root = "{root}"
metrics_port = -1

[train]
task = "two_moons"
regime = {json.dumps(list(regimes))}
seed = [0]
steps = {steps}
lam = {json.dumps(list(lam))}
width = 6
log_every = 20

[discover]
method = "acdc"
threshold = 0.01
{extra}
"""


def test_spec_makes_a_prune_job_per_bimt_lam_with_content_derived_ids(tmp_path):
    spec = parse_spec(spec_text(tmp_path, extra="[prune]\nfinetune_steps = 7"))
    train_jobs = spec.train_jobs()
    prunes = [j for j in train_jobs if j.settings["regime"] == "prune"]
    assert len(prunes) == 2 and len(spec.discover_jobs()) == 6
    by_id = {j.id: j for j in train_jobs}
    for pj in prunes:
        v, b = (by_id[n] for n in pj.needs)
        assert (v.settings["regime"], b.settings["regime"]) == ("vanilla", "bimt")
        assert b.settings["lam"] == pj.settings["lam"]  # the bimt model of its own lam
    # one vanilla model (vanilla ignores lam; the spec's grid names it at each lam): the first
    assert len({pj.needs[0] for pj in prunes}) == 1
    for pj in prunes:
        v, b = (by_id[n] for n in pj.needs)
        assert (pj.settings["vanilla_id"], pj.settings["match_id"]) == pj.needs
        assert pj.settings["finetune_steps"] == 7 and pj.settings["match_fraction"] == 1e-2
        assert train_jobs.index(pj) > max(train_jobs.index(v), train_jobs.index(b))
    # what decides the result decides the id: the models it reads, the fine-tuning, the count
    again = {j.id for j in parse_spec(spec_text(tmp_path, extra="[prune]\nfinetune_steps = 7")).jobs}
    assert again == {j.id for j in spec.jobs}
    other = [j for j in parse_spec(spec_text(tmp_path, extra="[prune]\nfinetune_steps = 8")).jobs
             if j.settings["regime"] == "prune" and j.kind == "train"]
    assert {j.id for j in other}.isdisjoint(j.id for j in prunes)
    longer = parse_spec(spec_text(tmp_path, steps=61, extra="[prune]\nfinetune_steps = 7")).train_jobs()
    assert {j.id for j in longer}.isdisjoint(j.id for j in train_jobs)
    default = [j for j in parse_spec(spec_text(tmp_path)).train_jobs() if j.settings["regime"] == "prune"]
    assert default[0].settings["finetune_steps"] == 6  # a tenth of 60 steps


@pytest.mark.parametrize("regimes,extra,needle", [
    (("vanilla", "prune"), "", 'needs a "vanilla" model of the same task, seed and steps and a "bimt" model'),
    (("bimt", "prune"), "", 'needs a "vanilla" model of the same task, seed and steps and a "bimt" model'),
    (("vanilla", "bimt", "prune"), "[prune]\nmatch_fraction = 1.5", "prune.match_fraction: 1.5 is not a fraction"),
    (("vanilla", "bimt", "prune"), "[prune]\nfinetune_steps = 0", "prune.finetune_steps: 0 is not a positive"),
    (("vanilla", "bimt", "prune"), "[prune]\nsteps = 3", "prune.steps: unknown field"),
])
def test_bad_prune_spec_is_one_line_naming_the_field(tmp_path, regimes, extra, needle):
    with pytest.raises(SpecError) as e:
        parse_spec(spec_text(tmp_path, regimes=regimes, extra=extra))
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_prune_jobs_run_after_their_models_end_to_end_and_resume(ray_local, tmp_path):
    spec = parse_spec(spec_text(tmp_path, lam=(1e-2,), extra="[prune]\nfinetune_steps = 10"))
    out = Scheduler(spec, echo=lambda m: None, progress=False).run()
    assert (out.finished, out.failed) == (6, 0)
    recs = read_records(spec.sweep_dir)
    (pj,) = [j for j in spec.train_jobs() if j.settings["regime"] == "prune"]
    bimt_rec = recs[pj.needs[1]]
    pruned = load_checkpoint(spec.sweep_dir / "jobs" / pj.id / "model.pt")
    assert sum(nonzero(pruned)) == bimt_rec["figures"]["weights_above_1e-2"] == recs[pj.id]["figures"]["weights_nonzero"]
    vanilla = load_checkpoint(spec.sweep_dir / "jobs" / pj.needs[0] / "model.pt")
    for w_v, w_p in zip(vanilla["weights"], pruned["weights"]):  # pruned from this very vanilla model
        kept = w_p != 0
        assert w_v.abs()[kept].min() >= w_v.abs()[~kept].max()
    (dj,) = [j for j in spec.discover_jobs() if j.model_id == pj.id]
    assert recs[dj.id]["figures"]["n_edges_kept"] <= sum(nonzero(pruned))  # a circuit of the pruned model
    df = pd.read_parquet(spec.sweep_dir / "jobs.parquet")
    assert set(df.regime) == {"vanilla", "bimt", "prune"}
    report, _ = write_report(spec.sweep_dir)
    assert "### prune ÷ vanilla" in report.read_text()

    # resume: nothing runs again; a lost prune result runs again from the cached models
    again = Scheduler(spec, echo=lambda m: None, progress=False).run()
    assert (again.finished, again.cached) == (0, 6)
    import shutil

    shutil.rmtree(spec.sweep_dir / "jobs" / pj.id)
    shutil.rmtree(spec.sweep_dir / "jobs" / dj.id)
    third = Scheduler(spec, echo=lambda m: None, progress=False).run()
    assert (third.finished, third.cached, third.failed) == (2, 4, 0)
    assert load_checkpoint(spec.sweep_dir / "jobs" / pj.id / "model.pt")["weights"][0].equal(pruned["weights"][0])


@pytest.mark.slow
def test_a_failed_bimt_job_skips_its_prune_job_and_that_ones_discovery(ray_local, tmp_path):
    spec = parse_spec(spec_text(tmp_path, lam=(1e-2,), extra='[prune]\nfinetune_steps = 5\n'
                                '[testing]\ncrash_once = ["train/two_moons/bimt"]'))
    spec.resources["max_retries"] = 0
    out = Scheduler(spec, echo=lambda m: None, progress=False).run()
    assert (out.finished, out.failed, out.skipped) == (2, 1, 3)  # vanilla + its circuit; bimt, prune, 2 circuits
    df = pd.read_parquet(spec.sweep_dir / "jobs.parquet")
    assert set(df[df.regime == "prune"].status) == {"skipped"}


def test_prune_reads_the_vanilla_point_of_another_train_table():
    """The matched design: vanilla once as a point in its own [[train]] table, prune in the lam grid
    beside bimt; each prune job reads that one vanilla model and the bimt model of its lam."""
    spec = parse_spec('[sweep]\nname="p"\n[[train]]\ntask="two_moons"\nregime="vanilla"\nseed=[0, 1]\nsteps=60\n'
                      '[[train]]\ntask="two_moons"\nregime=["bimt", "prune"]\nlam=[1e-4, 1e-3]\nseed=[0, 1]\nsteps=60\n')
    jobs = {j.id: j for j in spec.train_jobs()}
    prunes = [j for j in jobs.values() if j.settings["regime"] == "prune"]
    assert len(jobs) == 2 + 2 * 2 + 2 * 2 and len(prunes) == 4
    for pj in prunes:
        v, b = (jobs[n] for n in pj.needs)
        assert v.settings["regime"] == "vanilla" and v.settings["seed"] == pj.settings["seed"]
        assert b.settings["regime"] == "bimt" and (b.settings["seed"], b.settings["lam"]) == (
            pj.settings["seed"], pj.settings["lam"])
    assert len({pj.label for pj in prunes}) == 4 and all("/lam" in pj.label for pj in prunes)


def test_gradual_pruning_follows_the_cubic_schedule_to_its_final_sparsity():
    from circuitry.workers.prune import GradualConfig, cubic_sparsity, gradual_prune

    # Zhu & Gupta: s_t = s_f (1 - (1 - t / end)^3) from s_i = 0
    assert cubic_sparsity(0, 100, 0.9) == 0.0 and cubic_sparsity(100, 100, 0.9) == 0.9
    assert cubic_sparsity(50, 100, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert cubic_sparsity(150, 100, 0.8) == 0.8
    vanilla = train(TrainConfig(task="two_moons", regime="vanilla", steps=300, seed=0)).checkpoint
    r = gradual_prune(vanilla, GradualConfig(sparsity=0.8, steps=200, n_prunes=10))
    ckpt = r.checkpoint
    assert ckpt["regime"] == "gmp" and ckpt["config"]["prune_end"] == 150
    for w in ckpt["weights"]:  # every layer at the final sparsity, pruned weights exactly zero
        assert int((w != 0).sum()) == max(1, round(0.2 * w.numel()))
    assert r.metrics["sparsity"] == pytest.approx(0.8, abs=0.02)
    assert r.metrics["test_accuracy"] > 0.8  # the net adapted as it lost weights
    with pytest.raises(ValueError, match="vanilla"):
        gradual_prune(ckpt, GradualConfig(sparsity=0.5, steps=10))
