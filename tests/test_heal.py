"""A sweep folder that heals (issue 15), on a real local Ray: each way a finished job's folder can
be damaged or planted ends, on the next `circuitry run`, with exit 0, every job of the spec
finished exactly once (jobs.parquet and MLflow), the damaged folder kept aside under
jobs/.damaged-*, and nothing that is not a job of the spec recorded or uploaded."""
import json
import shutil

import pandas as pd
import pytest
from test_sweep import make_spec, mlflow_runs, run

from circuitry.orchestrator.cli import main
from circuitry.orchestrator.signing import sign

pytestmark = pytest.mark.slow


def finished_sweep(tmp_path):
    """One model and two circuits (acdc, eap) on it: 3 jobs, all finished."""
    spec = make_spec(tmp_path, tasks=("independence",), regimes=("vanilla",), methods=("acdc", "eap"), steps=30)
    (tmp_path / "s.toml").write_text(spec.source)
    out = run(spec)
    assert (out.finished, out.failed) == (3, 0)
    train = spec.train_jobs()[0]
    acdc, eap = sorted(spec.discover_jobs(), key=lambda j: j.settings["method"])
    return spec, train, acdc, eap


def rerun(tmp_path, capsys) -> str:
    """`circuitry run` again; it returns normally (exit 0) or the test fails."""
    capsys.readouterr()
    main(["run", str(tmp_path / "s.toml"), "--quiet"])
    return capsys.readouterr().out


def assert_every_job_once(spec, jobs_dir):
    ids = {j.id for j in spec.jobs}
    assert {p.name for p in jobs_dir.iterdir() if not p.name.startswith(".")} >= ids
    df = pd.read_parquet(spec.sweep_dir / "jobs.parquet")
    assert sorted(df.job_id) == sorted(ids) and set(df.status) == {"finished"}
    _, runs = mlflow_runs(type("O", (), {"tracking_uri": f"sqlite:///{spec.sweep_dir / 'mlflow.db'}"}))
    tags = sorted(r.data.tags["circuitry.job_id"] for r in runs)
    assert tags == sorted(ids) and {r.info.status for r in runs} == {"FINISHED"}
    return {r.data.tags["circuitry.job_id"]: r for r in runs}


def aside(jobs_dir, name):
    found = list(jobs_dir.glob(f".damaged-{name}-*"))
    assert len(found) == 1, found
    return found[0]


def test_truncated_job_json_heals(ray_local, tmp_path, capsys):
    spec, train, acdc, eap = finished_sweep(tmp_path)
    jobs = spec.sweep_dir / "jobs"
    record = jobs / train.id / "job.json"
    text = record.read_text()
    record.write_text(text[: len(text) // 2])
    before = {j.id: (jobs / j.id).stat().st_ino for j in (acdc, eap)}
    out = rerun(tmp_path, capsys)
    assert f"warning: {record}: unreadable (JSONDecodeError); moved aside to jobs/.damaged-{train.id}-" in out
    assert "1 jobs ran, 2 were already finished, 0 failed" in out
    assert (aside(jobs, train.id) / "job.json").read_text() == text[: len(text) // 2]
    # the model came out the same (same seed, CPU): its circuits are kept, not run again
    assert {j.id: (jobs / j.id).stat().st_ino for j in (acdc, eap)} == before
    assert "warning" not in out.replace(f"warning: {record}", "")
    assert_every_job_once(spec, jobs)


def test_truncated_model_heals_and_circuits_of_another_model_run_again(ray_local, tmp_path, capsys):
    spec, train, acdc, eap = finished_sweep(tmp_path)
    jobs = spec.sweep_dir / "jobs"
    model = jobs / train.id / "model.pt"
    model.write_bytes(model.read_bytes()[:200])
    # as if the ACDC circuit had been found on other weights (a re-training that is not bitwise
    # the same, e.g. on a GPU): it must run again on the new model; EAP's matches and stays
    rec = json.loads((jobs / acdc.id / "job.json").read_text())
    rec["figures"]["model_id"] = "0" * 16
    (jobs / acdc.id / "job.json").write_text(json.dumps(sign(rec)))  # as the driver would write it
    eap_inode = (jobs / eap.id).stat().st_ino
    out = rerun(tmp_path, capsys)
    assert f"warning: {jobs / train.id}: its sha256" in out or f"warning: {model}" in out
    assert f"warning: {acdc.label} was found on model {'0' * 16}, but {train.label} now gives model " in out
    assert "2 jobs ran, 1 were already finished, 0 failed" in out
    assert (aside(jobs, train.id) / "model.pt").stat().st_size == 200
    assert json.loads((aside(jobs, acdc.id) / "job.json").read_text())["figures"]["model_id"] == "0" * 16
    assert (jobs / eap.id).stat().st_ino == eap_inode
    from circuitry.workers.discover import model_id
    from circuitry.workers.model import load_checkpoint

    now = model_id(load_checkpoint(jobs / train.id / "model.pt"))
    assert json.loads((jobs / acdc.id / "job.json").read_text())["figures"]["model_id"] == now
    runs = assert_every_job_once(spec, jobs)
    assert runs[acdc.id].data.params["model_id"] == train.id


def test_job_json_without_job_id_heals(ray_local, tmp_path, capsys):
    spec, train, acdc, eap = finished_sweep(tmp_path)
    jobs = spec.sweep_dir / "jobs"
    rec = json.loads((jobs / eap.id / "job.json").read_text())
    del rec["job_id"]
    (jobs / eap.id / "job.json").write_text(json.dumps(rec))
    (jobs / "extra").mkdir()  # an added folder with a record and no job_id
    (jobs / "extra" / "job.json").write_text(json.dumps({"kind": "train", "status": "finished", "files": []}))
    out = rerun(tmp_path, capsys)
    assert f"job_id None is not the folder's name; moved aside to jobs/.damaged-{eap.id}-" in out
    assert "not a job folder (a job id is 16 hex digits); moved aside to jobs/.damaged-extra-" in out
    assert "it is no job of this sweep" in out
    assert "1 jobs ran, 2 were already finished, 0 failed" in out
    assert "job_id" not in json.loads((aside(jobs, eap.id) / "job.json").read_text())
    aside(jobs, "extra")
    assert_every_job_once(spec, jobs)


def test_planted_records_upload_nothing(ray_local, tmp_path, capsys):
    spec, train, acdc, eap = finished_sweep(tmp_path)
    jobs = spec.sweep_dir / "jobs"
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("head-side secret")
    # a job's record naming a folder outside the sweep, and one naming another job's folder
    shutil.rmtree(jobs / acdc.id)
    (jobs / acdc.id).mkdir()
    (jobs / acdc.id / "job.json").write_text(json.dumps(
        {"job_id": train.id, "kind": "train", "status": "finished", "files": ["model.pt"]}))
    (jobs / "planted").mkdir()
    (jobs / "planted" / "job.json").write_text(json.dumps(
        {"job_id": "../../secret", "kind": "discover", "status": "finished", "files": ["key.txt"]}))
    # a self-consistent result of no job of the spec, holding a copy of the secret
    foreign = jobs / "fedcba9876543210"
    foreign.mkdir()
    shutil.copy(secret / "key.txt", foreign / "key.txt")
    (foreign / "job.json").write_text(json.dumps(
        {"job_id": foreign.name, "kind": "train", "status": "finished", "files": ["key.txt"]}))

    out = rerun(tmp_path, capsys)
    assert f"job_id '{train.id}' is not the folder's name; moved aside to jobs/.damaged-{acdc.id}-" in out
    assert "planted: not a job folder (a job id is 16 hex digits); moved aside to jobs/.damaged-planted-" in out
    assert "1 jobs ran, 2 were already finished, 0 failed" in out
    assert (aside(jobs, acdc.id) / "job.json").is_file() and (aside(jobs, "planted") / "job.json").is_file()
    assert foreign.is_dir()  # not a job of this spec: left alone, unread
    runs = assert_every_job_once(spec, jobs)
    assert foreign.name not in runs
    main(["sync", str(spec.sweep_dir)])  # sync reads the spec's jobs only
    assert "0 runs logged, 3 were already there" in capsys.readouterr().out
    assert_every_job_once(spec, jobs)
    assert not list((spec.sweep_dir / "mlartifacts").rglob("key.txt"))
