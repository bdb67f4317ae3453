"""Checkpoints within a train job, kept by the driver (orchestrator.checkpoints): the signed file
store, the spec field, and sweeps on the real local Ray whose job dies after its first checkpoint
and resumes from it, on Ray's retry or on the sweep's next run."""
import json
import os

import pytest
import torch

from circuitry.orchestrator.checkers import SpecError
from circuitry.orchestrator.checkpoints import CheckpointStore
from circuitry.orchestrator.scheduler import Scheduler
from circuitry.orchestrator.spec import parse_spec
from circuitry.workers.model import checkpoint_from_bytes
from circuitry.workers.names import DEFAULT_CHECKPOINT_EVERY

JOB, OTHER = "0123456789abcdef", "fedcba9876543210"


def _store(tmp_path):
    warnings = []
    return CheckpointStore(tmp_path, warn=warnings.append), warnings


def test_a_kept_checkpoint_reads_back_and_is_removed(tmp_path):
    store, warnings = _store(tmp_path)
    assert store.load(JOB) is None
    assert store.save(JOB, 100, b"state at 100") and store.save(JOB, 200, b"state at 200")
    assert store.load(JOB) == (200, b"state at 200") and store.job_ids() == [JOB]
    store.remove(JOB)
    assert store.load(JOB) is None and store.job_ids() == [] and warnings == []


@pytest.mark.parametrize("tamper", ["garbage", "step", "bytes", "other_job", "link"])
def test_a_planted_or_corrupt_checkpoint_is_ignored_with_one_line(tmp_path, tamper):
    store, warnings = _store(tmp_path)
    store.save(OTHER, 100, b"the other job's state")
    store.save(JOB, 100, b"state")
    path = store.path(JOB)
    head, _, state = path.read_bytes().partition(b"\n")
    outside = tmp_path / "outside"
    outside.write_bytes(b"not to be read")
    if tamper == "garbage":
        path.write_bytes(b"\x80 not a checkpoint")
    elif tamper == "step":  # a later step, to skip training: the signature no longer matches
        path.write_bytes(json.dumps({**json.loads(head), "step": 900}).encode() + b"\n" + state)
    elif tamper == "bytes":
        path.write_bytes(head + b"\n" + b"other state")
    elif tamper == "other_job":
        path.write_bytes(store.path(OTHER).read_bytes())
    else:
        path.unlink()
        path.symlink_to(outside)
    assert store.load(JOB) is None
    assert len(warnings) == 1 and "step 0" in warnings[0] and "\n" not in warnings[0]
    assert not os.path.lexists(path)  # removed, and a link's target left alone
    assert outside.read_bytes() == b"not to be read"
    assert store.load(OTHER) == (100, b"the other job's state")


def test_a_checkpoints_link_is_moved_aside_never_followed(tmp_path):
    store, warnings = _store(tmp_path / "sweep")
    (tmp_path / "sweep").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "sweep" / "checkpoints").symlink_to(elsewhere)
    store.prepare()
    assert len(warnings) == 1 and "moved aside" in warnings[0]
    assert not os.path.lexists(tmp_path / "sweep" / "checkpoints")
    assert store.save(JOB, 100, b"state") and store.load(JOB) == (100, b"state")
    assert list(elsewhere.iterdir()) == []


def spec_text(root, name="c", steps=300, every=100, testing="", retries=1):
    return f"""
[sweep]
name = "{name}"
root = "{root}"
metrics_port = -1
pictures = false

[train]
task = "independence"
regime = "bimt"
steps = {steps}
width = 6
swap_every = 40
log_every = 50
checkpoint_every = {every}

[resources]
max_retries = {retries}
{testing}
"""


def test_checkpoint_every_is_one_value_and_no_part_of_job_ids(tmp_path):
    spec = parse_spec(spec_text(tmp_path))
    assert spec.checkpoint_every == 100
    assert [j.id for j in spec.jobs] == [j.id for j in parse_spec(spec_text(tmp_path, every=7)).jobs]
    assert "checkpoint_every" not in spec.jobs[0].settings
    default = parse_spec(spec_text(tmp_path).replace("checkpoint_every = 100", ""))
    assert default.checkpoint_every == DEFAULT_CHECKPOINT_EVERY
    with pytest.raises(SpecError, match=r"train.checkpoint_every: \[100, 200\] is a list"):
        parse_spec(spec_text(tmp_path, every="[100, 200]"))
    two = spec_text(tmp_path).replace("[train]", "[[train]]") + '\n[[train]]\ntask = "two_moons"\nregime = "vanilla"\n' \
        'steps = 10\ncheckpoint_every = 50\n'
    with pytest.raises(SpecError, match="train.checkpoint_every: the \\[\\[train\\]\\] tables give 50, 100"):
        parse_spec(two)


def run(spec, lines=None):
    sink = lines.append if lines is not None else (lambda m: None)
    return Scheduler(spec, echo=sink, progress=False, record_mlflow=False).run()


def job_record(spec):
    return json.loads((spec.sweep_dir / "jobs" / spec.jobs[0].id / "job.json").read_text())


def weights(spec):
    blob = (spec.sweep_dir / "jobs" / spec.jobs[0].id / "model.pt").read_bytes()
    return checkpoint_from_bytes(blob, "model.pt")["weights"]


def kept(spec):
    return sorted(p.name for p in (spec.sweep_dir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tmp_path_factory):
    spec = parse_spec(spec_text(tmp_path_factory.mktemp("whole")))
    out = run(spec)
    assert out.finished == 1
    return spec


slow = pytest.mark.slow


@slow
def test_a_job_dying_after_its_checkpoint_resumes_from_it_on_retry(ray_local, tmp_path, uninterrupted):
    spec = parse_spec(spec_text(tmp_path, testing='[testing]\ncrash_after_checkpoint = ["train"]'))
    out = run(spec)
    assert (out.finished, out.failed, out.retries) == (1, 0, 1)
    rec = job_record(spec)
    assert rec["attempts"] == 2 and rec["resumed_from_step"] == 100
    assert job_record(uninterrupted)["resumed_from_step"] == 0
    assert kept(spec) == []  # written while the job ran, removed when it finished
    for a, b in zip(weights(spec), weights(uninterrupted), strict=True):
        assert torch.equal(a, b)


@slow
def test_the_next_run_resumes_from_the_checkpoint_the_driver_kept(ray_local, tmp_path, uninterrupted):
    spec = parse_spec(spec_text(tmp_path, retries=0, testing='[testing]\ncrash_after_checkpoint = ["train"]'))
    out = run(spec)
    assert (out.finished, out.failed) == (0, 1)
    assert kept(spec) == [f"{spec.jobs[0].id}.ckpt"]
    head = json.loads((spec.sweep_dir / "checkpoints" / kept(spec)[0]).read_bytes().partition(b"\n")[0])
    assert (head["job_id"], head["step"]) == (spec.jobs[0].id, 100) and head["signature"]
    again = run(spec)  # the fault fired already
    assert (again.finished, again.failed) == (1, 0)
    assert job_record(spec)["resumed_from_step"] == 100 and kept(spec) == []
    for a, b in zip(weights(spec), weights(uninterrupted), strict=True):
        assert torch.equal(a, b)


@slow
def test_a_planted_checkpoint_is_never_loaded(ray_local, tmp_path):
    spec = parse_spec(spec_text(tmp_path))
    folder = spec.sweep_dir / "checkpoints"
    folder.mkdir(parents=True)
    (folder / f"{spec.jobs[0].id}.ckpt").write_bytes(b'{"format": "circuitry.checkpoint/1", "step": 200}\nx')
    lines = []
    out = run(spec, lines)
    assert out.finished == 1 and job_record(spec)["resumed_from_step"] == 0
    assert [m for m in lines if "checkpoint" in m and "ignored" in m and "step 0" in m]
    assert kept(spec) == []
