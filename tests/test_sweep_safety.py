"""Issue 28, as someone who can write a sweep folder and as a user with bad files would attack it:
real files, real links, a real MLflow SQLite store, real processes. Nothing outside the sweep
folder is touched or uploaded, nothing planted is trusted, and no input brings the driver down."""
import functools
import gzip
import hashlib
import hmac
import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitry.orchestrator.cli import main
from circuitry.orchestrator.count import count_jobs
from circuitry.orchestrator.recorder import embedded_uri
from circuitry.orchestrator.signing import canonical
from circuitry.orchestrator.spec import expand, parse_spec
from circuitry.orchestrator.store import JobResult, JobStore

SECRET = b"root-only secret 7f3a9c"
CIRCUITRY = str(Path(sys.executable).parent / "circuitry")  # the console script


@functools.cache
def model_bytes() -> bytes:
    from circuitry.workers.model import CoordMLP, checkpoint_bytes

    return checkpoint_bytes(CoordMLP([4, 3, 2]).to_checkpoint("independence", "vanilla", 0, {}))


def spec_text(root, seeds, name="s") -> str:
    return (f'[sweep]\nname = "{name}"\nroot = "{root}"\nmetrics_port = -1\n[train]\ntask = "independence"\n'
            f'regime = "vanilla"\nseed = {json.dumps(list(seeds))}\nsteps = 5\nwidth = 4\n')


def store_sweep(tmp_path, seeds=(0, 1, 2, 3)):
    """A sweep folder whose jobs all finished, written by the driver's own store (no Ray)."""
    text = spec_text(tmp_path / "sweeps", seeds)
    spec = parse_spec(text)
    d = spec.sweep_dir
    d.mkdir(parents=True)
    (d / "spec.toml").write_text(text)
    (d / "sweep.json").write_text(json.dumps({"name": "s", "tracking_uri": embedded_uri(d)}))
    store = JobStore(d, fsync=False)
    store.prepare()
    for j in spec.jobs:
        store.commit(j.id, JobResult({"kind": "train", "label": j.label, "status": "finished",
                                      "settings": j.settings, "figures": {"test_loss": 0.1}},
                                     {"model.pt": model_bytes(), "metrics.json": b'{"test_loss": 0.1}'}))
    return spec, d


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def exit_code(argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def bytes_under(folder: Path) -> list[tuple[str, bytes]]:
    """Every regular file under `folder` (links neither followed nor read), with its bytes."""
    out = []
    for base, dirs, files in os.walk(folder):
        for name in files + dirs:
            p = Path(base) / name
            if p.is_symlink() or not p.is_file():
                continue
            out.append((str(p.relative_to(folder)), p.read_bytes()))
    return sorted(out)


def snapshot(path: Path):
    """A folder's or file's names and bytes, to compare byte for byte."""
    return bytes_under(path) if path.is_dir() else path.read_bytes()


# ---------------------------------------------------------------- links and uploads
def test_sync_uploads_no_byte_a_link_points_at(tmp_path, capsys):
    spec, d = store_sweep(tmp_path)
    a, b, c, ok = (j.id for j in spec.jobs)
    jobs = d / "jobs"
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    (jobs / a / "loot.txt").symlink_to(secret)  # a file the record does not list, a link
    rec = json.loads((jobs / b / "job.json").read_text())  # metrics.json a link, its sum removed
    (jobs / b / "metrics.json").unlink()
    (jobs / b / "metrics.json").symlink_to(secret)
    del rec["sha256"]["metrics.json"]
    (jobs / b / "job.json").write_text(json.dumps(rec))
    outside = tmp_path / "elsewhere"  # jobs/<c> a link to a copy of its own folder, plus the secret
    (jobs / c).rename(outside)
    (outside / "loot.txt").write_bytes(SECRET)
    (jobs / c).symlink_to(outside)
    victims = tmp_path / "victims"  # the embedded store's names, planted as links
    (victims / "mlartifacts").mkdir(parents=True)
    (victims / "mlflow.db").write_bytes(b"keep")
    (victims / "mlartifacts" / "keep.txt").write_bytes(b"keep")
    for name in ("mlflow.db", "mlartifacts"):
        (d / name).symlink_to(victims / name)
    before = snapshot(outside), snapshot(victims)

    main(["sync", str(d)])  # returns: exit 0
    cap = capsys.readouterr()
    assert "1 runs logged, 0 were already there" in cap.out and "3 job folders left aside" in cap.out
    assert cap.err.count("is a link; moved aside to .damaged-") == 2
    leaked = [name for name, data in bytes_under(d) if SECRET in data]
    assert not leaked, leaked
    assert (d / "mlflow.db").is_file() and list((d / "mlartifacts").rglob("model.pt"))  # the intact job's files
    assert (snapshot(outside), snapshot(victims)) == before and secret.read_bytes() == SECRET


def test_sync_names_the_uri_of_sweep_json_and_does_not_follow_it(tmp_path, capsys):
    spec, d = store_sweep(tmp_path, seeds=(0,))
    other = tmp_path / "other.db"
    (d / "sweep.json").write_text(json.dumps({"name": "s", "tracking_uri": f"sqlite:///{other}"}))
    main(["sync", str(d)])
    cap = capsys.readouterr()
    assert f"sqlite:///{other}" in cap.err and "not followed" in cap.err
    assert "1 runs logged" in cap.out and not other.exists() and (d / "mlflow.db").is_file()


def test_a_record_without_a_valid_signature_is_neither_resumed_nor_synced(tmp_path, capsys):
    spec, d = store_sweep(tmp_path, seeds=(0, 1))
    planted, forged = (j.id for j in spec.jobs)
    for jid in (planted, forged):  # valid sha256 of every file; no signature / another key's
        rec = json.loads((d / "jobs" / jid / "job.json").read_text())
        rec.pop("signature")
        if jid == forged:
            rec["signature"] = hmac.new(b"another key" * 4, canonical(rec), hashlib.sha256).hexdigest()
        (d / "jobs" / jid / "job.json").write_text(json.dumps(rec))
    main(["sync", str(d)])
    out = capsys.readouterr().out
    assert "0 runs logged" in out and "2 job folders left aside" in out
    warnings = []
    assert JobStore(d).heal({planted, forged}, warnings.append) == {}  # resume: both run again
    assert len(warnings) == 1 and "2 job records carry no valid signature" in warnings[0]
    assert len(list((d / "jobs").glob(".damaged-*"))) == 2


@pytest.mark.slow
def test_run_and_report_write_nothing_through_a_link(ray_local, tmp_path, capsys):
    """Links at jobs/, sweep.json, jobs.parquet, report.md, the write probe and .lock: `run` and
    `report` leave every target byte for byte as it was; a planted parquet row is no path."""
    text = spec_text(tmp_path / "sweeps", [0])
    (tmp_path / "s.toml").write_text(text)
    d = parse_spec(text).sweep_dir
    d.mkdir(parents=True)
    target = tmp_path / "target"
    (target / "jobs" / ".tmp-0000000000000000-1-ab").mkdir(parents=True)
    (target / "jobs" / ".tmp-0000000000000000-1-ab" / "keep.txt").write_bytes(b"keep")
    (target / "jobs" / "0123456789abcdef").mkdir()
    (target / "jobs" / "0123456789abcdef" / "job.json").write_text("{}")
    (target / "jobs" / "file.txt").write_bytes(b"keep")
    (d / "jobs").symlink_to(target / "jobs")
    for name in ("sweep.json", "jobs.parquet", "report.md", ".circuitry-write-test", ".lock"):
        (target / name).write_bytes(b"keep " + name.encode())
        (d / name).symlink_to(target / name)
    before = snapshot(target)

    main(["run", str(tmp_path / "s.toml"), "--quiet", "--no-mlflow"])
    out = capsys.readouterr().out
    assert "is a link or a file, not a folder; moved aside to .damaged-jobs-" in out
    assert "1 jobs ran, 0 were already finished, 0 failed" in out
    assert snapshot(target) == before
    assert not (d / "jobs").is_symlink() and len(JobStore(d).records()) == 1

    from circuitry.orchestrator.recorder import write_parquet

    write_parquet([{"job_id": "../../target/jobs/0123456789abcdef", "kind": "train", "status": "finished",
                    "task": "independence", "regime": "vanilla", "seed": 0}], d / "jobs.parquet")
    main(["report", str(d), "--no-mlflow"])
    assert snapshot(target) == before
    assert not (d / "report.md").is_symlink() and "1 trained models" in (d / "report.md").read_text()


# ---------------------------------------------------------------- the lock
HOLD = """
import sys, time
from circuitry.orchestrator.store import sweep_lock
with sweep_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_deleted_lock_file_breaks_no_lock(tmp_path):
    """A process holds the sweep (as a driver does); `.lock` is deleted; a second `circuitry run`
    (a real process) stops in one line, exit 2, before starting Ray, and runs no job."""
    text = spec_text(tmp_path / "sweeps", [0])
    (tmp_path / "s.toml").write_text(text)
    d = parse_spec(text).sweep_dir
    d.mkdir(parents=True)
    (d / ".lock").write_text("")  # an older version's lock file: removing it must change nothing
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (d / ".lock").unlink()
        second = subprocess.run([CIRCUITRY, "run", str(tmp_path / "s.toml"),
                                 "--quiet"], capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is in use by another circuitry run" in lines[0]
    assert second.stdout == "" and not (d / "jobs").exists()  # no Ray, no job, no folder prepared


# ---------------------------------------------------------------- bounded grids
BIG = """
[sweep]
name = "big"
[train]
task = "independence"
regime = "vanilla"
seed = {seeds}
steps = {steps}
"""


def test_a_million_jobs_are_counted_not_built_and_refused(tmp_path, capsys):
    (tmp_path / "big.toml").write_text(BIG.format(seeds=list(range(1000)), steps=list(range(1, 1001))))
    for cmd in ("validate", "run"):
        assert exit_code([cmd, str(tmp_path / "big.toml"), *(["--root", str(tmp_path)] if cmd == "run" else [])]) == 2
        line = one_line(capsys)
        assert "sweep.max_jobs: the grids expand to 1,000,000 jobs" in line and "max_jobs = 100,000" in line
    assert not (tmp_path / "big").exists()


COUNTED = """
[sweep]
name = "c"
max_jobs = 5000
[[train]]
task = ["independence", "two_moons"]
regime = ["vanilla", "bimt", "prune"]
seed = [0, 1, 2]
steps = [10, 20]
[[train]]
task = "independence"
regime = ["vanilla", "l1"]
seed = [1, 2, 3]
steps = 20
lam = [0.001, 0.5]
[[discover]]
method = ["acdc", "eap"]
threshold = [0.01, 0.1]
[[discover]]
method = "eap"
threshold = [0.1, 0.2]
seed = [0, 1]
train_seed = [1, 3]
[[discover]]
method = "exact"
target_f = 0.9
train_seed = 2
"""


def test_the_count_is_the_number_of_jobs_built():
    """Overlapping grids (a job named twice runs once), task recipe defaults, prune points and
    discover grids filtered by train_seed: the count without building equals the jobs built."""
    spec = parse_spec(COUNTED)
    n = count_jobs(spec.train, spec.discover)
    assert n.exact and (n.train, n.discover) == (len(spec.train_jobs()), len(spec.discover_jobs()))
    second = 2 * 3 * 2  # regime x seed x lam of the second [[train]]
    assert n.train == len(expand(spec.train[:1], None)) + second - 2  # it names 2 jobs of the first again
    assert n.total == len(spec.jobs) > 100


# ---------------------------------------------------------------- bad files
def checkpoint(**change) -> dict:
    from circuitry.workers.model import CoordMLP

    ckpt = CoordMLP([4, 5, 2]).to_checkpoint("independence", "vanilla", 0, {})
    return {**ckpt, **change}


BAD_CHECKPOINTS = {
    "NaN or infinite": lambda c: {"weights": [c["weights"][0].index_fill(0, torch.tensor([0]), float("nan")),
                                              c["weights"][1]]},
    "weights[1] has shape": lambda c: {"weights": [c["weights"][0], torch.zeros(3, 5)]},
    "is not a list of 2-64 layer widths": lambda c: {"shape": [4, 2**40, 2]},
    "expected a floating-point tensor": lambda c: {"biases": [c["biases"][0].long(), c["biases"][1]]},
    "coordinates[1] has shape": lambda c: {"coordinates": [c["coordinates"][0], torch.zeros(0), c["coordinates"][2]]},
    "in_perm is not a permutation": lambda c: {"in_perm": torch.zeros(4, dtype=torch.long)},
}


def transformer_checkpoint() -> dict:
    from circuitry.workers.transformer import Transformer, TransformerConfig

    return Transformer(TransformerConfig(1, 2, 4, 2, 3, 6, 30, 0, 30)).to_checkpoint("induction", "vanilla", 0, {})


def _changed_weight(c, name, value):
    return {"weights": {**c["weights"], name: value}}


BAD_TRANSFORMER_CHECKPOINTS = {
    "weights[blocks.0.attn.W_Q] holds NaN or infinite": lambda c: _changed_weight(
        c, "blocks.0.attn.W_Q", torch.full_like(c["weights"]["blocks.0.attn.W_Q"], float("nan"))),
    "weights[blocks.0.mlp.W_in] has shape [3, 4], expected [4, 3]": lambda c: _changed_weight(
        c, "blocks.0.mlp.W_in", torch.zeros(3, 4)),
    "weights[unembed.W_U] has dtype torch.int64": lambda c: _changed_weight(
        c, "unembed.W_U", c["weights"]["unembed.W_U"].long()),
    "weights lack blocks.0.attn.W_K": lambda c: {"weights": {k: v for k, v in c["weights"].items()
                                                             if k != "blocks.0.attn.W_K"}},
    "weights hold blocks.1.attn.W_Q": lambda c: _changed_weight(c, "blocks.1.attn.W_Q", torch.zeros(2, 4, 2)),
    "model.d_model 'four' is not an integer": lambda c: {"model": {**c["model"], "d_model": "four"}},
    "model.n_layers 65 is more than 64": lambda c: {"model": {**c["model"], "n_layers": 65}},
    "model: set exactly one of d_vocab": lambda c: {"model": {**c["model"], "d_input": 3}},
    "coordinates[resid] has shape [5], expected [4]": lambda c: {"coordinates": {**c["coordinates"],
                                                                                 "resid": torch.zeros(5)}},
    "task 'nope' is not one of": lambda c: {"task": "nope"},
}


BAD_FILES = [(checkpoint, why, change) for why, change in BAD_CHECKPOINTS.items()] + [
    (transformer_checkpoint, why, change) for why, change in BAD_TRANSFORMER_CHECKPOINTS.items()]


@pytest.mark.parametrize("make, why, change", BAD_FILES, ids=[why for _, why, _ in BAD_FILES])
def test_a_bad_checkpoint_of_either_format_is_one_line_and_exit_2(tmp_path, capsys, make, why, change):
    c = make()
    torch.save({**c, **change(c)}, tmp_path / "model.pt")
    code = exit_code(["discover", "--model", str(tmp_path / "model.pt"), "--method", "eap", "--threshold", "0.1",
                      "--out", str(tmp_path / "o")])
    line = one_line(capsys)
    assert code == 2 and why in line and "model.pt" in line and "expected a checkpoint `circuitry train` wrote" in line
    assert not (tmp_path / "o").exists()


def test_a_good_transformer_checkpoint_passes_the_same_check():
    from circuitry.tasks.tracr import compiled_checkpoint
    from circuitry.workers.model import checkpoint_bytes, checkpoint_from_bytes

    for ckpt in (transformer_checkpoint(), compiled_checkpoint("frac_prevs")):
        assert checkpoint_from_bytes(checkpoint_bytes(ckpt), "model.pt")["format"] == "circuitry.transformer/1"


def write_idx(path, array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def mnist_folder(folder, labels=(0, 1, 2), size=28, images_code=0x08):
    folder.mkdir(exist_ok=True)
    x = np.zeros((len(labels), size, size), dtype=np.uint8 if images_code == 0x08 else np.float32)
    y = np.array(labels, dtype=np.uint8)
    for split in ("train", "t10k"):
        write_idx(folder / f"{split}-images-idx3-ubyte", x, images_code)
        write_idx(folder / f"{split}-labels-idx1-ubyte", y)
    return folder


def empty_test_split(folder):
    mnist_folder(folder)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    return folder


@pytest.mark.parametrize("make, why", [
    (lambda f: mnist_folder(f, labels=(0, 10, 2)), "label 10 at index 1 is not a digit 0..9"),
    (lambda f: mnist_folder(f, size=10), "images have shape [3, 10, 10], expected [N, 28, 28]"),
    (lambda f: mnist_folder(f, images_code=0x0D), "images are float32, expected unsigned bytes"),
    (empty_test_split, "test split: holds no examples"),
])
def test_a_bad_mnist_folder_is_one_line_and_exit_2(tmp_path, capsys, make, why):
    folder = make(tmp_path / "m")
    code = exit_code(["train", "--task", "mnist", "--regime", "vanilla", "--steps", "1", "--data-dir", str(folder),
                      "--out", str(tmp_path / "o")])
    line = one_line(capsys)
    assert code == 2 and why in line, line


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    from circuitry.tasks.mnist import MnistDataError, read_idx

    # declares 3 labels, inflates to 64 MiB: refused after reading 4 bytes past the declared 3
    header = bytes([0, 0, 8, 1]) + struct.pack(">I", 3)
    with gzip.open(tmp_path / "bomb.gz", "wb") as f:
        f.write(header)
        for _ in range(64):
            f.write(bytes(1 << 20))
    assert (tmp_path / "bomb.gz").stat().st_size < 1 << 20
    with pytest.raises(MnistDataError, match="holds at least 4 data bytes, its header"):
        read_idx(tmp_path / "bomb.gz")
    # declares 60000 x 28 x 28 x 8 bytes (float64): over the limit, refused from the header alone
    (tmp_path / "huge").write_bytes(bytes([0, 0, 0x0E, 3]) + struct.pack(">III", 60000, 28, 28 * 8))
    with pytest.raises(MnistDataError, match="over the 268435456-byte limit"):
        read_idx(tmp_path / "huge")


# ---------------------------------------------------------------- a full disk
def _limited(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes past it fail with EFBIG
    return apply


def test_a_full_disk_is_one_line_and_keeps_every_result(tmp_path):
    spec, d = store_sweep(tmp_path, seeds=(0, 1))
    before = snapshot(d / "jobs")
    (d / "jobs.parquet").write_bytes(b"the old table")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run([CIRCUITRY, "sync", str(d)], capture_output=True,
                       text=True, timeout=300, preexec_fn=_limited(2000), env=env)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert f"cannot write {d / 'jobs.parquet'} (File too large)" in lines[0]
    assert snapshot(d / "jobs") == before and (d / "jobs.parquet").read_bytes() == b"the old table"
    assert not [n for n in os.listdir(d) if ".tmp-" in n]

    # `run`: sweep.json cannot be written; one line, before Ray starts, the results kept
    (tmp_path / "s.toml").write_text(spec.source)
    p = subprocess.run([CIRCUITRY, "run", str(tmp_path / "s.toml"), "--quiet"],
                       capture_output=True, text=True, timeout=300, preexec_fn=_limited(60), env=env)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and f"cannot write {d / 'sweep.json'}" in lines[0], p.stderr
    assert snapshot(d / "jobs") == before and len(JobStore(d).records()) == 2


# ---------------------------------------------------------------- Ray
def test_ray_address_local_gets_the_embedded_ray_and_its_token(monkeypatch):
    from circuitry.orchestrator.ray_session import cluster_address

    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert cluster_address() is None and "RAY_ADDRESS" not in os.environ
    assert cluster_address("ray://head:10001") == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address() == "10.0.0.1:6379"


def test_a_key_others_can_read_stops_the_command_and_moves_nothing(tmp_path, capsys, monkeypatch):
    spec, d = store_sweep(tmp_path, seeds=(0,))
    loose = tmp_path / "loose-key"
    loose.write_text("ab" * 32)
    loose.chmod(0o644)
    monkeypatch.setenv("CIRCUITRY_KEY_FILE", str(loose))
    assert exit_code(["sync", str(d)]) == 2
    line = one_line(capsys)
    assert "the signing key is readable by others (mode 644)" in line and f"chmod 600 {loose}" in line
    assert not list((d / "jobs").glob(".damaged-*")) and not (d / "mlflow.db").exists()


@pytest.mark.slow
def test_no_more_jobs_are_pending_in_ray_than_the_window(ray_local, tmp_path):
    """Jobs beyond the submission window wait in the driver's queue (orchestrator.scheduler), so
    Ray holds at most `window` pending tasks however big the spec; every job still runs once."""
    from circuitry.orchestrator.scheduler import Scheduler

    class Watched(Scheduler):
        most = 0

        def _start(self):
            super()._start()
            self.window = 2

        def _wait(self):
            Watched.most = max(Watched.most, len(self.pending))
            return super()._wait()

    spec = parse_spec(spec_text(tmp_path, [0, 1, 2, 3, 4]).replace("metrics_port = -1", "metrics_port = -1\npictures = false"))
    out = Watched(spec, progress=False, record_mlflow=False, echo=lambda m: None).run()
    assert (out.finished, out.failed) == (5, 0) and Watched.most == 2
    assert len(JobStore(spec.sweep_dir).records()) == 5


def test_the_write_probe_writes_through_no_link(tmp_path):
    """`train --out` and `run` probe their folder with a new file of a unique name (O_EXCL,
    O_NOFOLLOW): a link planted at the old probe's name is left as it is, its target untouched."""
    from click import UsageError

    from circuitry.orchestrator.cli_common import writable_dir

    out, target = tmp_path / "out", tmp_path / "target"
    out.mkdir()
    target.write_bytes(b"keep")
    (out / ".circuitry-write-test").symlink_to(target)
    assert writable_dir(str(out), "--out") == out
    assert target.read_bytes() == b"keep" and (out / ".circuitry-write-test").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == [".circuitry-write-test"]
    (tmp_path / "linked").symlink_to(out)
    with pytest.raises(UsageError, match="sweep.root: .* is a link"):
        writable_dir(str(tmp_path / "linked"), "sweep.root", no_link=True)
