"""The driver's writer of SWEEP/jobs/ (orchestrator.store), without Ray: what a result looks like
on disk, what a reader accepts as finished, and what happens to folders that are not results."""
import functools
import json
import os

import pytest

from circuitry.orchestrator.store import JobResult, JobStore, SweepBusy, check_size, sweep_lock
from circuitry.workers.files import write_atomic


@functools.cache
def model_bytes() -> bytes:
    from circuitry.workers.model import CoordMLP, checkpoint_bytes

    return checkpoint_bytes(CoordMLP([4, 3, 2]).to_checkpoint("independence", "vanilla", 0, {}))


def result(job_id="a1b2c3d4e5f60718", **files):
    return JobResult({"job_id": job_id, "kind": "train", "label": "train/x", "status": "finished",
                      "figures": {"test_loss": float("nan"), "n_edges": 12}},
                     files or {"model.pt": model_bytes(), "metrics.json": b"{}"})


def test_commit_writes_the_folder_and_the_reader_sees_it(tmp_path):
    store = JobStore(tmp_path)
    store.prepare()
    rec = store.commit("a1b2c3d4e5f60718", result())
    folder = tmp_path / "jobs" / "a1b2c3d4e5f60718"
    assert sorted(p.name for p in folder.iterdir()) == ["job.json", "metrics.json", "model.pt"]
    assert (folder / "model.pt").read_bytes() == model_bytes()
    on_disk = json.loads((folder / "job.json").read_text())
    assert on_disk == rec and rec["files"] == ["model.pt", "metrics.json"]
    assert rec["sha256"]["metrics.json"] == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert rec["figures"]["test_loss"] is None  # strict JSON: NaN -> null
    assert store.records() == {"a1b2c3d4e5f60718": rec}
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == ["a1b2c3d4e5f60718"]  # no temp left


def test_the_driver_decides_the_job_id_and_file_names(tmp_path):
    store = JobStore(tmp_path)
    store.prepare()
    rec = store.commit("00000000000000aa", result(job_id="../../elsewhere"))
    assert rec["job_id"] == "00000000000000aa" and (tmp_path / "jobs" / "00000000000000aa").is_dir()
    for bad in ("../x", "job.json", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="not a plain file name"):
            store.commit("00000000000000bb", result(**{bad: b"x"}))
    assert not (tmp_path / "jobs" / "00000000000000bb").exists()
    assert not list((tmp_path / "jobs").glob(".tmp-*"))


def test_half_written_and_damaged_folders_are_never_results(tmp_path):
    store = JobStore(tmp_path)
    store.prepare()
    jobs = tmp_path / "jobs"
    (jobs / ".tmp-00000000000000cc-1-ab").mkdir()  # a commit cut off by a crash
    (jobs / ".tmp-00000000000000cc-1-ab" / "job.json").write_text('{"job_id": "00000000000000cc"}')
    (jobs / "00000000000000dd").mkdir()
    (jobs / "00000000000000dd" / "job.json").write_text('{"job_id": "00000000')  # truncated
    (jobs / "00000000000000ee").mkdir()
    (jobs / "00000000000000ee" / "job.json").write_text('{"job_id": "/etc"}')  # foreign id
    (jobs / "00000000000000ff").mkdir()
    (jobs / "00000000000000ff" / "job.json").write_text('{"job_id": "00000000000000ff", "files": ["model.pt"]}')
    (jobs / "0000000000000011").mkdir()
    (jobs / "0000000000000011" / "job.json").write_text('{"kind": "train"}')  # no job_id
    assert store.records() == {}
    store.prepare()  # the next run clears half-written results
    assert not list(jobs.glob(".tmp-*"))

    # the job runs again; its commit moves the damaged folder aside instead of failing on it
    rec = store.commit("00000000000000dd", result())
    assert store.records() == {"00000000000000dd": rec}
    aside = list(jobs.glob(".damaged-00000000000000dd-*"))
    assert len(aside) == 1 and (aside[0] / "job.json").read_text() == '{"job_id": "00000000'


def test_an_interrupted_commit_leaves_nothing(tmp_path, monkeypatch):
    store = JobStore(tmp_path)
    store.prepare()

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.commit("00000000000000aa", result())
    monkeypatch.undo()
    assert list((tmp_path / "jobs").iterdir()) == [] and store.records() == {}


def test_a_result_over_the_size_limit_fails_in_the_worker(monkeypatch):
    import circuitry.orchestrator.store as store_mod

    monkeypatch.setattr(store_mod, "RESULT_LIMIT_BYTES", 10)
    assert check_size(result(small=b"123456789")).nbytes == 9
    with pytest.raises(ValueError, match="over the 10-byte limit of one result"):
        check_size(result(big=b"12345678901"))


def test_heal_sets_aside_what_is_not_a_finished_result_of_the_spec(tmp_path):
    """Each way a folder can fail a check, and the folders heal must leave alone."""
    store = JobStore(tmp_path)
    store.prepare()
    jobs = tmp_path / "jobs"
    ids = [f"{i:016x}" for i in range(1, 8)]
    for jid in ids:
        store.commit(jid, result())
    (jobs / ids[0] / "job.json").write_text('{"job_id": "0000')  # truncated JSON
    (jobs / ids[1] / "model.pt").write_bytes(model_bytes()[:100])  # truncated checkpoint
    (jobs / ids[2] / "job.json").write_text(json.dumps({"kind": "train"}))  # no job_id
    (jobs / ids[3] / "job.json").write_text(json.dumps({"job_id": ids[4], "files": []}))  # another folder's id
    (jobs / ids[4] / "metrics.json").write_bytes(b'{"x": 1}')  # a file changed after it was written
    rec = json.loads((jobs / ids[5] / "job.json").read_text())
    (jobs / ids[5] / "job.json").write_text(json.dumps({**rec, "files": ["../../../etc/passwd"]}))
    planted = jobs / "planted"
    planted.mkdir()
    (planted / "job.json").write_text(json.dumps({"job_id": "planted", "files": []}))
    other_spec = "abcdefabcdefabcd"  # a finished job of an earlier, larger spec: kept, never read
    store.commit(other_spec, result())
    (jobs / other_spec / "job.json").write_text("not even JSON")

    warnings = []
    spec_ids = set(ids)
    got = store.heal(spec_ids, warnings.append)
    assert set(got) == {ids[6]}
    assert len(warnings) == 7 and all(w.startswith("warning: ") and "\n" not in w for w in warnings)
    assert sum("the job runs again" in w for w in warnings) == 6
    assert "it is no job of this sweep" in next(w for w in warnings if "planted" in w)
    left = sorted(p.name for p in jobs.iterdir() if not p.name.startswith("."))
    assert left == sorted([ids[6], other_spec])
    aside = sorted(p.name for p in jobs.glob(".damaged-*"))
    assert len(aside) == 7 and any(a.startswith(f".damaged-{ids[0]}-") for a in aside)
    assert store.records(spec_ids) == got
    assert store.heal(spec_ids, warnings.append) == got and len(warnings) == 7  # healed: nothing more
    with pytest.raises(ValueError, match="not a job id"):
        store.commit("../outside", result())


def test_sweep_lock_and_atomic_writes(tmp_path):
    with sweep_lock(tmp_path):
        with pytest.raises(SweepBusy, match="in use by another circuitry run, sync or report"):
            with sweep_lock(tmp_path):
                pass
    with sweep_lock(tmp_path):  # released
        write_atomic(tmp_path / "jobs.parquet", b"one")
        write_atomic(tmp_path / "jobs.parquet", b"two")
    assert (tmp_path / "jobs.parquet").read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.parquet"]  # no temp left, no lock file


def test_sync_and_report_wait_for_no_one(tmp_path, capsys):
    """`circuitry sync` and `circuitry report` take the sweep lock: while another process holds
    it they stop with one line (exit 2) and write nothing."""
    from circuitry.orchestrator.cli import main

    (tmp_path / "sweep.json").write_text(json.dumps({"name": "t", "tracking_uri": "sqlite:///x.db"}))
    (tmp_path / "spec.toml").write_text('[sweep]\nname = "t"\n[train]\ntask = "independence"\n'
                                        'regime = "vanilla"\nsteps = 1\n')
    (tmp_path / "jobs.parquet").write_bytes(b"")
    with sweep_lock(tmp_path):
        for args in (["sync", str(tmp_path)], ["report", str(tmp_path), "--no-mlflow"]):
            with pytest.raises(SystemExit) as e:
                main(args)
            assert e.value.code == 2
            assert "is in use by another circuitry run, sync or report" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.parquet", "spec.toml", "sweep.json"]
    (tmp_path / "spec.toml").unlink()
    with pytest.raises(SystemExit) as e:
        main(["sync", str(tmp_path)])
    assert e.value.code == 2 and "has no spec.toml" in capsys.readouterr().err


def test_commit_many_writes_every_result_and_returns_the_error_of_a_bad_one(tmp_path):
    store = JobStore(tmp_path)
    store.prepare()
    ids = [f"{i:016x}" for i in range(20)]
    items = [(jid, result()) for jid in ids] + [("00000000000000ff", result(**{"../x": b"1"}))]
    out = store.commit_many(items)
    assert [r["job_id"] for r in out[:20]] == ids
    assert isinstance(out[20], ValueError) and "plain file name" in str(out[20])
    assert set(store.records()) == set(ids)  # every folder is a finished result, nothing half-written
    assert not [p for p in (tmp_path / "jobs").iterdir() if p.name.startswith(".tmp")]
