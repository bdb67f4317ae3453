"""What a researcher meets at the command line: `--help` without torch, one torch thread, `--out`
that refuses another run's folder and is written together, MNIST data found again by `discover`,
and a printed line that says what matters (accuracy, dependencies, an empty or useless circuit)."""
import json
import subprocess
import sys
import time

import pytest
import torch

from circuitry.orchestrator.cli import main
from tests.test_mnist import write_mnist

torch.set_num_threads(1)


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


HEAVY = ("torch", "sklearn", "mlflow", "ray", "pandas", "matplotlib")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["discover", "--help"], ["run", "--help"]])
def test_help_imports_nothing_heavy(argv):
    code = ("import sys\nfrom circuitry.orchestrator.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout[-500:]


def test_train_uses_one_thread_unless_told(tmp_path, capsys):
    torch.set_num_threads(2)
    code, out, err = run_cli(["train", "--task", "independence", "--regime", "vanilla", "--steps", "5",
                              "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert torch.get_num_threads() == 1
    code, out, err = run_cli(["train", "--task", "independence", "--regime", "vanilla", "--steps", "5",
                              "--threads", "2", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)


def test_out_holding_another_run_is_refused_unless_force(tmp_path, capsys):
    out = tmp_path / "run"
    code, line, err = run_cli(["train", "--task", "two_moons", "--regime", "vanilla", "--steps", "5",
                               "--out", str(out)], capsys)
    assert code == 0, err
    assert "test accuracy" in line  # a classifier's printed line
    before = (out / "model.pt").read_bytes()
    (out / "circuit.graphml").write_text("<graphml/>")  # a stale file of some older run
    code, _, err = run_cli(["train", "--task", "independence", "--regime", "vanilla", "--steps", "5",
                            "--out", str(out)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "--force" in err and "already holds a run" in err
    assert (out / "model.pt").read_bytes() == before
    code, _, err = run_cli(["train", "--task", "independence", "--regime", "vanilla", "--steps", "5",
                            "--out", str(out), "--force"], capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["config"]["task"] == "independence"
    assert not (out / "circuit.graphml").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary folder left


def test_failed_command_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CIRCUITRY_MNIST_DIR", raising=False)
    out = tmp_path / "new" / "run"
    code, _, err = run_cli(["train", "--task", "mnist", "--regime", "vanilla", "--steps", "5", "--out", str(out)],
                           capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--data-dir" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from circuitry import tasks

    path = tmp_path_factory.mktemp("m") / "model.pt"
    torch.save(tasks.get_task("planted_teacher").teacher(), path)
    return path


def test_discover_replaces_the_whole_run(teacher, tmp_path, capsys):
    out = tmp_path / "c"
    args = ["discover", "--model", str(teacher), "--method", "eap", "--top-k", "5", "--out", str(out)]
    assert run_cli([*args, "--export", "graphml"], capsys)[0] == 0
    assert (out / "circuit.graphml").exists()
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already holds a run" in err
    assert run_cli([*args, "--force"], capsys)[0] == 0
    assert (out / "circuit.parquet").exists() and not (out / "circuit.graphml").exists()


def test_empty_circuit_warns_with_the_target_f_hint(teacher, tmp_path, capsys):
    code, line, err = run_cli(["discover", "--model", str(teacher), "--method", "acdc", "--threshold", "1e9",
                               "--out", str(tmp_path / "c")], capsys)
    assert code == 0, err
    assert " 0/" in line
    assert "warning: the circuit is empty" in err and "--target-f" in err


def test_dependencies_in_the_printed_line(tmp_path, capsys):
    assert run_cli(["train", "--task", "independence", "--regime", "vanilla", "--steps", "5",
                    "--out", str(tmp_path / "m")], capsys)[0] == 0
    code, line, err = run_cli(["discover", "--model", str(tmp_path / "m" / "model.pt"), "--method", "eap",
                               "--top-k", "3", "--out", str(tmp_path / "c")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert f"dependencies match: {'yes' if summary['dependencies_match'] else 'NO'}" in line


def test_discover_finds_mnist_data(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CIRCUITRY_MNIST_DIR", raising=False)
    data = tmp_path / "idx"
    data.mkdir()
    write_mnist(data, n_train=40, n_test=20)
    model = tmp_path / "m"
    code, _, err = run_cli(["train", "--task", "mnist", "--regime", "vanilla", "--steps", "3", "--width", "8",
                            "--data-dir", str(data), "--out", str(model)], capsys)
    assert code == 0, err
    monkeypatch.delenv("CIRCUITRY_MNIST_DIR", raising=False)  # train set it for its own process
    args = ["discover", "--model", str(model / "model.pt"), "--method", "eap", "--top-k", "10"]
    code, line, err = run_cli([*args, "--out", str(tmp_path / "c1")], capsys)  # the folder recorded at training
    assert code == 0, err
    moved = data.rename(tmp_path / "moved")
    monkeypatch.delenv("CIRCUITRY_MNIST_DIR", raising=False)
    code, _, err = run_cli([*args, "--out", str(tmp_path / "c2")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--data-dir" in err
    assert not (tmp_path / "c2").exists()
    code, _, err = run_cli([*args, "--data-dir", str(moved), "--out", str(tmp_path / "c3")], capsys)
    assert code == 0, err


def test_status_reads_the_sweeps_counts_from_the_driver_log():
    from circuitry.orchestrator.cli_sweep import sweep_counts

    log = ("sweep demo: 72 jobs, 12 already finished, 60 to run -> /x\n[13/72] finished a (1.0 s)\n"
           "[13/72] FAILED b: boom\n[14/72] finished c (1.0 s)\n")
    assert sweep_counts(log) == "14/72 jobs done (12 cached, 1 failed)"
    assert sweep_counts("Starting the driver\n") == ""


def test_draw_writes_the_input_reach_of_an_image_task(tmp_path, capsys):
    model, circuit = tmp_path / "m", tmp_path / "c"
    assert run_cli(["train", "--task", "digits", "--regime", "vanilla", "--steps", "3", "--width", "6",
                    "--out", str(model)], capsys)[0] == 0
    assert run_cli(["discover", "--model", str(model / "model.pt"), "--method", "eap", "--top-k", "40",
                    "--out", str(circuit)], capsys)[0] == 0
    code, line, err = run_cli(["draw", str(circuit), "--model", str(model / "model.pt")], capsys)
    assert code == 0, err
    assert (circuit / "input_reach.png").stat().st_size > 0 and "input reach of 40 circuit edges" in line
    code, _, err = run_cli(["draw", str(circuit), "--model", str(tmp_path / "nope.pt")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_draw_refuses_a_task_without_images(teacher, tmp_path, capsys):
    assert run_cli(["discover", "--model", str(teacher), "--method", "eap", "--top-k", "5",
                    "--out", str(tmp_path / "c")], capsys)[0] == 0
    code, _, err = run_cli(["draw", str(tmp_path / "c"), "--model", str(teacher)], capsys)
    assert code == 2 and "image tasks" in err and len(err.strip().splitlines()) == 1


def test_every_spec_error_at_once_with_did_you_mean(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[sweep]\nname = "bad"\n[train]\ntask = "independence"\nregime = ["vanilla", "bimtt"]\n'
                    'stpes = 100\n[discover]\nmethod = "acdc"\ntreshold = 0.01\n[resorces]\n')
    code, _, err = run_cli(["validate", str(path)], capsys)
    assert code == 2 and err.count("\n") == 1
    for fragment in ('"bimtt" is not one of', "did you mean bimt?", "train.stpes: unknown field",
                     "did you mean steps?", "discover.treshold: unknown field", "did you mean threshold?",
                     "resorces: unknown table", "did you mean resources?"):
        assert fragment in err, (fragment, err)


def test_run_turns_sigterm_into_ctrl_c_only_while_it_lasts():
    """`circuitry run` stops like Ctrl-C on SIGTERM (`ray job stop`), and gives the process its own
    handler back afterwards: a test or notebook that ran it in-process still stops on SIGTERM."""
    import os
    import signal

    from circuitry.orchestrator.cli_sweep import sigterm_as_ctrl_c

    def own(signum, frame):
        raise SystemExit(143)

    before = signal.signal(signal.SIGTERM, own)
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigterm_as_ctrl_c():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, before)
