"""Faults: a training run killed with SIGKILL mid-epoch resumes to the parameters of an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from invprox.checkpoint import CheckpointError, load_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

STEPS = 24  # 4 steps per epoch: the kill lands mid-epoch


def _train_cmd(tiny_data, out, *extra):
    return [sys.executable, "-m", "invprox.cli", "train", "--data", tiny_data["data"], "--size", "8",
            "--channels", "1", "--prox", "flow", "--flow", tiny_data["flow"], "--K", "2", "--batch", "4",
            "--epochs", "100", "--max-steps", str(STEPS), "--val-every", "1", "--n-val", "4",
            "--lr-net", "1e-3", "--seed", "0", "--patience", "0", "--no-progress", "--out", str(out), *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("INVPROX_DATA", None)
    return env


def _step(path):
    try:
        return int(load_checkpoint(path)["run"]["step"])
    except (FileNotFoundError, CheckpointError, KeyError):
        return -1


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tiny_data, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_train_cmd(tiny_data, ref), env=_env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_train_cmd(tiny_data, run), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _step(run / "checkpoint.pt") < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = _step(run / "checkpoint.pt")
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 0 < killed_at < STEPS

    subprocess.run(_train_cmd(tiny_data, run, "--resume"), env=_env(), check=True, capture_output=True,
                   timeout=300)
    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    assert a["run"]["step"] == b["run"]["step"] == STEPS
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"{k} differs after kill at step {killed_at} and resume"


def test_corrupt_newest_checkpoint_refused_and_previous_kept(tiny_data, tmp_path):
    from invprox.checkpoint import load_latest, previous_path
    from invprox.train.solver_train import train_solver

    out = tmp_path / "run"
    train_solver(tiny_data["data"], str(out), size=8, channels=1, K=1, batch=4, max_steps=2, val_every=1,
                 flow=tiny_data["flow"], progress=False, log=lambda s: None)
    ckpt = out / "checkpoint.pt"
    assert previous_path(ckpt).is_file()
    ckpt.write_bytes(ckpt.read_bytes()[:-100])  # truncated, as by a full disk
    with pytest.raises(CheckpointError, match="truncated|corrupt|size"):
        load_checkpoint(ckpt)
    with pytest.warns(RuntimeWarning):
        state = load_latest(ckpt)
    assert state["run"]["step"] >= 1
