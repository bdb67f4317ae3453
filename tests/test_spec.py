"""Sweep specs: validation errors (one line, exit 2), grid expansion and content-hash job ids."""

from pathlib import Path

import pytest

from circuitry.orchestrator.cli import main
from circuitry.orchestrator.spec import SpecError, parse_spec

GOOD = """
[sweep]
name = "s"
root = "{root}"

[train]
task = ["independence", "two_moons"]
regime = ["vanilla", "bimt"]
seed = [0, 1]
steps = 100

[discover]
method = ["acdc", "exact"]
threshold = 0.01
"""


def spec_text(root, **replace):
    text = GOOD.format(root=root)
    for old, new in replace.items():
        text = text.replace(old.replace("__", " "), new)
    return text


# (the change to the good spec, a fragment the error must contain)
BAD = [
    ('regime = ["vanilla", "bimt"]', 'regime = ["vanilla", "bimt", "bimtt"]', 'train.regime[2]: "bimtt" is not one of vanilla, l1, local, swap, bimt, prune'),
    ('task = ["independence", "two_moons"]', 'task = "nope"', 'train.task: "nope" is not one of'),
    ("steps = 100", "steps = 0", "train.steps: 0 is not a positive integer"),
    ("steps = 100", 'steps = "100"', 'train.steps: "100" is not a positive integer'),
    ("steps = 100", "steps = 1.5", "train.steps: 1.5 is not a positive integer"),
    ("steps = 100", "", "train.steps: missing"),
    ("seed = [0, 1]", "seed = [0, -1]", "train.seed[1]: -1 is not a non-negative integer"),
    ("seed = [0, 1]", "seed = []", "train.seed: [] is empty"),
    ("seed = [0, 1]", "seed = [1, 1]", "train.seed[1]: 1 is listed twice"),
    ("seed = [0, 1]", "seed = [0, 1]\nlam = -1.0", "train.lam: -1.0 is not a non-negative number"),
    ("seed = [0, 1]", "seed = [0, 1]\nlr = 0", "train.lr: 0.0 is not a positive number"),
    ("seed = [0, 1]", "seed = [0, 1]\nwidth = [8, true]", "train.width[1]: true is not a positive integer"),
    ("seed = [0, 1]", "seed = [0, 1]\nstepz = 3", "train.stepz: unknown field; allowed:"),
    ("seed = [0, 1]", "seed = [0, 1]\nlam = nan", "train.lam: NaN is not a non-negative number"),
    ('method = ["acdc", "exact"]', 'method = ["acdc", "ACDC"]', 'discover.method[1]: "ACDC" is not one of acdc, exact, eap, eap-ig'),
    ("threshold = 0.01", "threshold = -0.1", "discover.threshold: -0.1 is not a non-negative number"),
    ("threshold = 0.01", "", "discover.threshold: missing; give threshold (tau, e.g. 0.01) or target_f"),
    ("threshold = 0.01", "threshold = 0.01\ntarget_f = 0.95", "discover.target_f: give either threshold or target_f, not both"),
    ("threshold = 0.01", "target_f = 1.5", "discover.target_f: 1.5 is not a faithfulness in (0, 1]"),
    ("threshold = 0.01", "target_f = [0.9, 0]", "discover.target_f[1]: 0.0 is not a faithfulness in (0, 1]"),
    ("threshold = 0.01", 'threshold = 0.01\norder = "sideways"', 'discover.order: "sideways" is not one of ascending, descending, random'),
    ("threshold = 0.01", 'threshold = 0.01\norder = ["ascending", "random"]', "discover.order: the sender order is acdc's; put exact in its own"),
    ("threshold = 0.01", 'threshold = 0.01\nablation = "mean_"', 'discover.ablation: "mean_" is not one of resample, zero, mean'),
    ("threshold = 0.01", "threshold = 0.01\noutput = 5", "discover.output[0]: 5 is not an output of task independence"),
    ('name = "s"', 'name = "my sweep!"', 'sweep.name: "my sweep!" is not a name'),
    ('name = "s"', "", "sweep.name: missing"),
    ('name = "s"', 'name = "s"\nmetrics_port = 70000', "sweep.metrics_port: 70000 is not a port"),
    ('name = "s"', 'name = "s"\ntracking_uri = "ftp://x"', 'sweep.tracking_uri: "ftp://x" is not a tracking URI'),
    ('name = "s"', 'name = "s"\ncolour = "red"', "sweep.colour: unknown field"),
    ("[discover]", "[discovr]", "discovr: unknown table; allowed: sweep, train, discover, resources, prune, testing"),
    ("[train]", "[trian]", "trian: unknown table"),
    ("threshold = 0.01", "threshold = 0.01\n[resources]\nmax_retries = -1", "resources.max_retries: -1 is not a non-negative integer"),
    ("threshold = 0.01", "threshold = 0.01\n[resources]\ntrain_cpus = 0", "resources.train_cpus: 0.0 is not a positive number"),
    ("threshold = 0.01", "threshold = 0.01\n[resources]\nedge_chunk = \"big\"", 'resources.edge_chunk: "big" is not a non-negative integer'),
    ("threshold = 0.01", "threshold = 0.01\n[testing]\ncrash_once = \"train\"", 'testing.crash_once: "train" is not a list of job selectors'),
    ("steps = 100", "steps = 1000000000000000000000000000000",
     "train.steps: 1000000000000000000000000000000 is outside TOML's 64-bit integer range"),
    ("seed = [0, 1]", "seed = [0, -9223372036854775809]", "train.seed[1]: -9223372036854775809 is outside TOML's 64-bit"),
    ("seed = [0, 1]", "seed = [0, 1]\nlam = 1" + "0" * 400,  # too large even for a float
     "train.lam: 1" + "0" * 400 + " is outside TOML's 64-bit integer range"),
    ("steps = 100", "steps = [100", "not valid TOML"),
    ("steps = 100", "steps = {a = 1}", "train.steps: a table is not allowed here"),
]


@pytest.mark.parametrize("old,new,fragment", BAD, ids=[b[2][:40] for b in BAD])
def test_malformed_spec_one_line_exit_2(tmp_path, capsys, old, new, fragment):
    good = spec_text(tmp_path / "out")
    assert old in good
    path = tmp_path / "bad.toml"
    path.write_text(good.replace(old, new, 1))
    with pytest.raises(SystemExit) as e:
        main(["validate", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert fragment in err, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_run_rejects_bad_spec_before_anything_runs(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(spec_text(tmp_path / "out").replace('"bimt"]', '"bimtt"]'))
    with pytest.raises(SystemExit) as e:
        main(["run", str(path)])
    assert e.value.code == 2
    assert 'train.regime[1]: "bimtt" is not one of' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_spec_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["validate", str(tmp_path / "nope.toml")])
    assert e.value.code == 2
    assert "no such spec file" in capsys.readouterr().err


def test_validate_prints_job_count(tmp_path, capsys):
    path = tmp_path / "good.toml"
    path.write_text(spec_text(tmp_path / "out"))
    main(["validate", str(path)])
    out = capsys.readouterr().out
    assert "8 train + 16 discover = 24 jobs" in out


def test_quickstart_is_valid():
    from pathlib import Path

    from circuitry.orchestrator.spec import load_spec

    spec = load_spec(Path(__file__).parent.parent / "examples" / "quickstart.toml")
    tasks = {j.settings["task"] for j in spec.train_jobs()}
    regimes = {j.settings["regime"] for j in spec.train_jobs()}
    assert len(tasks) >= 2 and {"vanilla", "bimt"} <= regimes
    assert {j.settings["method"] for j in spec.discover_jobs()} >= {"acdc", "exact"}
    assert len({j.settings["seed"] for j in spec.train_jobs()}) >= 2


def test_ids_are_content_hashes(tmp_path):
    a = parse_spec(spec_text(tmp_path))
    b = parse_spec(spec_text(tmp_path).replace('name = "s"', 'name = "other"'))
    assert [j.id for j in a.jobs] == [j.id for j in b.jobs]  # the name decides nothing
    assert len({j.id for j in a.jobs}) == len(a.jobs)
    # the task default lam written out names the same job
    c = parse_spec(spec_text(tmp_path).replace("steps = 100", "steps = 100\nlam = 1e-3"))
    assert {j.id for j in c.jobs} == {j.id for j in a.jobs}
    # a discover job depends on its model's id
    d = parse_spec(spec_text(tmp_path).replace("steps = 100", "steps = 101"))
    assert not {j.id for j in d.jobs} & {j.id for j in a.jobs}
    for j in a.discover_jobs():
        assert j.model_id in {t.id for t in a.train_jobs()}
    # more grid points keep the old ids
    e = parse_spec(spec_text(tmp_path).replace("seed = [0, 1]", "seed = [0, 1, 2]"))
    assert {j.id for j in a.jobs} < {j.id for j in e.jobs}


def test_id_includes_package_version(tmp_path, monkeypatch):
    import circuitry.orchestrator.jobs as jobs_mod

    a = parse_spec(spec_text(tmp_path))
    monkeypatch.setattr(jobs_mod, "package_version", lambda: "9.9.9")
    b = parse_spec(spec_text(tmp_path))
    assert not {j.id for j in a.jobs} & {j.id for j in b.jobs}


def test_train_settings_resolve_to_the_task_recipe_and_the_recipe_is_in_the_id(tmp_path, monkeypatch):
    """An omitted lr / top_k / final_factor is the task's BIMT recipe, written out it names the same
    job; a task trained under another recipe (e.g. older defaults) never shares a job id."""
    from dataclasses import replace

    import circuitry.orchestrator.jobs as jobs_mod

    text = spec_text(tmp_path).replace('task = ["independence", "two_moons"]', 'task = "independence"')
    a = parse_spec(text)
    s = a.train_jobs()[0].settings
    assert (s["lr"], s["top_k"], s["final_factor"], s["swap_every"]) == (2e-3, 5, 1.0, 200)
    written = parse_spec(text.replace("steps = 100", "steps = 100\nlr = 2e-3\ntop_k = 5\nfinal_factor = 1.0"))
    assert [j.id for j in written.jobs] == [j.id for j in a.jobs]
    moons = parse_spec(text.replace('task = "independence"', 'task = "two_moons"')).train_jobs()[0].settings
    assert (moons["top_k"], moons["final_factor"]) == (10, 10.0)
    task = jobs_mod.TASKS["independence"]
    monkeypatch.setitem(jobs_mod.TASKS, "independence", replace(task, recipe=replace(task.recipe, cost_norm="mean")))
    b = parse_spec(text)
    assert not {j.id for j in a.train_jobs()} & {j.id for j in b.train_jobs()}


def test_spec_error_is_a_value_error():
    with pytest.raises(SpecError):
        parse_spec("[sweep]\nname='x'\n")


def test_several_discover_grids_union_their_jobs():
    from circuitry.orchestrator.spec import parse_spec

    spec = parse_spec("""
[sweep]
name = "g"
[train]
task = "independence"
regime = ["vanilla", "bimt"]
steps = 10
[[discover]]
method = "acdc"
threshold = [0.001, 0.01, 0.1]
[[discover]]
method = ["exact", "eap", "acdc"]
threshold = 0.01
""")
    disc = spec.discover_jobs()
    assert len(spec.train_jobs()) == 2 and len(disc) == 2 * (3 + 2)  # acdc at 0.01 is named twice, runs once
    assert len({j.id for j in disc}) == len(disc)
    assert sorted({(j.settings["method"], j.settings["threshold"]) for j in disc}) == [
        ("acdc", 0.001), ("acdc", 0.01), ("acdc", 0.1), ("eap", 0.01), ("exact", 0.01)]


def test_a_bad_field_in_the_second_discover_grid_is_named():
    from circuitry.orchestrator.spec import SpecError, parse_spec

    with pytest.raises(SpecError, match=r'^discover\[1\]\.method: "acdcc" is not one of'):
        parse_spec('[sweep]\nname="g"\n[train]\ntask="independence"\nregime="bimt"\nsteps=1\n'
                   '[[discover]]\nmethod="acdc"\nthreshold=0.1\n[[discover]]\nmethod="acdcc"\nthreshold=0.1\n')


def test_several_train_grids_union_their_jobs_and_labels_name_what_varies(tmp_path):
    # one lam grid per task (their reference lams differ), vanilla once as a point
    text = f"""
[sweep]
name = "s"
root = "{tmp_path}"

[[train]]
task = "two_moons"
regime = "vanilla"
seed = [0, 1]
steps = 100

[[train]]
task = "two_moons"
regime = ["l1", "bimt"]
lam = [1e-4, 1e-3]
seed = [0, 1]
steps = 100

[[train]]                  # names two_moons/bimt at lam 1e-3 again: it runs once
task = "two_moons"
regime = "bimt"
lam = 1e-3
seed = 0
steps = 100
"""
    spec = parse_spec(text)
    jobs = spec.train_jobs()
    assert len(jobs) == 2 + 2 * 2 * 2
    assert len({j.id for j in jobs}) == len(jobs)
    labels = sorted(j.label for j in jobs)
    assert len(set(labels)) == len(labels)
    assert "train/two_moons/bimt/seed0/lam0.0001" in labels
    # vanilla's lam is the recipe's (two_moons: 1e-3), and named since lam varies in the sweep
    assert "train/two_moons/vanilla/seed1/lam0.001" in labels
    # the same job named by one [train] table has the same id
    one = parse_spec(text.split("[[train]]")[0] + '[train]\ntask = "two_moons"\nregime = "bimt"\nlam = 1e-3\nseed = 0\n'
                     'steps = 100\n')
    assert one.train_jobs()[0].id in {j.id for j in jobs}


def test_errors_name_the_train_table_they_come_from(tmp_path):
    text = f'[sweep]\nname = "s"\nroot = "{tmp_path}"\n[[train]]\ntask = "two_moons"\nregime = "bimt"\nsteps = 10\n' \
           '[[train]]\ntask = "two_moons"\nregime = "bimt"\nsteps = 0\n'
    with pytest.raises(SpecError, match=r"^train\[1\]\.steps: 0 is not a positive integer"):
        parse_spec(text)


def test_target_f_and_order_name_their_jobs_and_leave_old_ids_alone():
    """target_f and a non-default order are part of a discover job's id and label; a spec that
    uses neither names exactly the jobs it named before they existed (the same hashed payload)."""
    from circuitry.orchestrator.jobs import job_hash, package_version

    head = '[sweep]\nname="g"\n[train]\ntask="independence"\nregime="bimt"\nsteps=10\n'
    old = parse_spec(head + '[discover]\nmethod="acdc"\nthreshold=0.01\n').discover_jobs()[0]
    tj = old.model_id
    payload = {"kind": "discover", "version": package_version(), "model_id": tj, "method": "acdc",
               "threshold": 0.01, "ablation": "resample", "output": None, "seed": 0,
               "examples": "generator-1000"}  # independence's fresh examples (issue 29)
    assert old.id == job_hash(payload)  # the id a spec without target_f/order always had
    assert old.label.endswith("/acdc/t0.01/resample") and old.settings["order"] == "ascending"
    same = parse_spec(head + '[discover]\nmethod="acdc"\nthreshold=0.01\norder="ascending"\n').discover_jobs()[0]
    assert same.id == old.id

    spec = parse_spec(head + '[[discover]]\nmethod="acdc"\ntarget_f=[0.9, 0.95, 0.99]\norder=["ascending", "random"]\n'
                      '[[discover]]\nmethod=["exact", "eap"]\ntarget_f=0.95\n')
    jobs = spec.discover_jobs()
    assert len(jobs) == 3 * 2 + 2 and len({j.id for j in jobs}) == len(jobs) and old.id not in {j.id for j in jobs}
    by = {(j.settings["method"], j.settings["target_f"], j.settings["order"]): j for j in jobs}
    assert by["acdc", 0.95, "random"].label.endswith("/acdc-random/f0.95/resample")
    assert by["acdc", 0.95, "ascending"].label.endswith("/acdc/f0.95/resample")
    assert all(j.settings["threshold"] is None for j in jobs)
    assert by["acdc", 0.95, "ascending"].id == job_hash(
        {k: v for k, v in payload.items() if k != "threshold"} | {"target_f": 0.95})


def test_train_seed_applies_a_discover_grid_to_some_models_only():
    head = '[sweep]\nname="g"\n[train]\ntask="independence"\nregime=["vanilla", "bimt"]\nseed=[0, 1, 2]\nsteps=10\n'
    spec = parse_spec(head + '[[discover]]\nmethod="acdc"\ntarget_f=0.95\n'
                      '[[discover]]\nmethod="acdc"\ntarget_f=0.95\norder=["descending", "random"]\ntrain_seed=0\n')
    jobs = spec.discover_jobs()
    orders = [j for j in jobs if j.settings["order"] != "ascending"]
    assert len(jobs) == 6 + 2 * 2
    assert {j.settings["train_seed"] for j in orders} == {0} and {j.settings["regime"] for j in orders} == {"vanilla", "bimt"}
    # a filter, not a setting: the ascending job of seed 0 has the id it has without the second table
    alone = parse_spec(head + '[[discover]]\nmethod="acdc"\ntarget_f=0.95\n').discover_jobs()
    assert {j.id for j in alone} <= {j.id for j in jobs}
    with pytest.raises(SpecError, match=r"^discover\[1\]\.train_seed: -1 is not a non-negative integer"):
        parse_spec(head + '[[discover]]\nmethod="acdc"\ntarget_f=0.95\n[[discover]]\nmethod="acdc"\nthreshold=0.1\n'
                   'train_seed=-1\n')


# sha256 of the (id, label) pairs each example spec expands to, at package version 0.2.0 (a
# version is part of every id; pinning it keeps this test about the job graph, not the release).
# Issue 29 changed the ids of jobs whose results it changed, and only those (labels unchanged):
# discover jobs on fresh generator examples (symbolic, two_moons, planted_teacher) or on MNIST's
# whole test split, and swap / bimt / prune models of runs shorter than the recipe's (their swap
# interval now scales with the steps) with their circuits; digits, modular addition and every
# vanilla, l1 and local model keep theirs (paper_modular_lam.toml: all 63). paper.toml gained 525
# mean-ablation circuits (seeds 0-4), new jobs beside the old ones.
EXAMPLE_IDS = {"mnist.toml": (90, '5344dd68e970c8b8'), "paper.toml": (3885, 'a9d0a0874070a118'),
               "paper_modular_lam.toml": (63, '220f81a589d667e5'), "quickstart.toml": (24, 'dfe65a085d2f5385')}


@pytest.mark.parametrize("name", sorted(EXAMPLE_IDS))
def test_example_specs_keep_their_job_ids_and_labels(name):
    """A sweep is resumed by job id: refactoring the spec or the job graph must not rename a job."""
    import hashlib
    import json

    from circuitry.orchestrator.jobs import expand
    from circuitry.orchestrator.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / name)
    pairs = [[j.id, j.label] for j in expand(spec.train, spec.discover, ver="0.2.0", prune=spec.prune)]
    count, digest = EXAMPLE_IDS[name]
    assert len(pairs) == count
    assert hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16] == digest


def test_metric_names_its_jobs_leaves_old_ids_alone_and_needs_a_classifier():
    """metric in [discover]: left out (or never written), the ids are the ones before it existed;
    logit_diff is another job with its own label; on a regression task it is refused, naming the field."""
    head = '[sweep]\nname="g"\n[train]\ntask="two_moons"\nregime="bimt"\nsteps=10\n'
    old = parse_spec(head + '[discover]\nmethod="acdc"\ntarget_f=0.95\n').discover_jobs()[0]
    jobs = parse_spec(head + '[discover]\nmethod="acdc"\ntarget_f=0.95\nmetric=["kl", "logit_diff"]\n').discover_jobs()
    by = {j.settings["metric"]: j for j in jobs}
    assert old.settings["metric"] is None and old.id not in {j.id for j in jobs} and by["kl"].id != by["logit_diff"].id
    assert by["logit_diff"].label.endswith("/acdc/f0.95/resample/logit_diff")
    with pytest.raises(SpecError, match=r"discover.metric\[0\]: logit_diff needs a classifier"):
        parse_spec(head.replace("two_moons", "planted_teacher") + '[discover]\nmethod="acdc"\ntarget_f=0.95\n'
                   'metric="logit_diff"\n')
    with pytest.raises(SpecError, match="not one of"):
        parse_spec(head + '[discover]\nmethod="acdc"\ntarget_f=0.95\nmetric="l2"\n')
