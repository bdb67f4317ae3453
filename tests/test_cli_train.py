import json
import subprocess
import sys

import pytest
import torch

from circuitry.orchestrator.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def test_train_writes_model_metrics_and_drawing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "circuitry.orchestrator.cli", "train", "--task", "independence", "--regime", "bimt",
         "--steps", "400", "--seed", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["format"] == "circuitry.mlp/1" and ckpt["regime"] == "bimt" and ckpt["config"]["steps"] == 400
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["curve"][-1]["step"] == 399 and metrics["test_loss"] < metrics["curve"][0]["test_loss"]
    assert (out / "network.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--task", "nope", "--regime", "bimt"], "--task"),
        (["--task", "independence", "--regime", "bimtt"], "--regime"),
        (["--task", "independence", "--regime", "bimt", "--steps", "-5"], "--steps"),
        (["--task", "independence", "--regime", "bimt", "--seed", "x"], "--seed"),
        (["--task", "independence", "--regime", "bimt", "--steps", "2", "--device", "tpu-9"],
         "--device: unknown device 'tpu-9'"),
    ],
)
def test_bad_train_input_is_one_line_and_exit_2(args, needle, capsys, tmp_path):
    code, err = run_cli(["train", *args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err


def test_unwritable_out_dir_is_reported(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run_cli(["train", "--task", "independence", "--regime", "bimt", "--out", str(blocker / "x")], capsys)
    assert code == 2 and "--out" in err and err.count("\n") == 1
