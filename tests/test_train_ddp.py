"""``torchrun --nproc_per_node=2 -m invprox train`` equals one process on the global batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from invprox.train.solver_setup import load_solver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list:
    """The processes below ``pid`` (read from /proc: torchrun starts its workers in their own sessions,
    so its process group does not reach them)."""
    children = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _send(pids, sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _train(args, out, nproc):
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}"]
    cmd += ["-m", "invprox", "train", *args, "--out", str(out)]
    # faulthandler in every process: a run that hangs is sent SIGABRT and prints its Python stacks
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        tree = [*_descendants(proc.pid), proc.pid]
        _send(tree, signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            _send(tree, signal.SIGKILL)  # none left behind, also where SIGABRT did not end it
        pytest.fail(f"{' '.join(cmd[:6])} ... hung for 300 s; its output and stacks:\n{out[-3000:]}\n"
                    f"{err[-12000:]}")
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not in this build")
def test_torchrun_two_processes_equal_one(tiny_data, tmp_path):
    """Flow prox (no batch norm), 3 Adam steps of a global batch of 4 under a warm-up and cosine schedule:
    two processes of 2 images each.

    The same function: the validation losses agree to float32 rounding. The parameters agree to 1e-3 of
    their norm, not to rounding: a few weights get gradients below 1e-9, pure float32 noise that differs
    with the summation order, and Adam scales every update to about lr whatever the gradient's size. In
    float64 the two agree to 1e-10 (``tests/test_distributed.py``; one step of this model: 2e-18).
    """
    args = ["--data", tiny_data["data"], "--size", "8", "--channels", "1", "--K", "2", "--batch", "4",
            "--max-steps", "3", "--val-every", "3", "--calibrate", "4", "--lr-net", "1e-3",
            "--no-progress", "--prox", "flow", "--flow", tiny_data["flow"],
            # a schedule that reads the budget used, agreed between the ranks (never reached here)
            "--lr-schedule", "cosine", "--warmup", "1", "--budget-minutes", "100"]
    _train(args, tmp_path / "one", 1)
    res = _train(args, tmp_path / "two", 2)
    assert res.stdout.count("calibrated on") == 1  # rank 0 speaks, rank 1 does not
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1["steps"] == m2["steps"] == 3 and m2["world_size"] == 2 and m1["world_size"] == 1
    assert m2["best_val_loss"] == pytest.approx(m1["best_val_loss"], rel=1e-5)
    one, _ = load_solver(tmp_path / "one" / "solver.pt")
    two, _ = load_solver(tmp_path / "two" / "solver.pt")
    v1 = torch.cat([p.detach().reshape(-1).double() for p in one.parameters()])
    v2 = torch.cat([p.detach().reshape(-1).double() for p in two.parameters()])
    assert float((v1 - v2).norm() / v1.norm()) < 1e-3
    with pytest.raises(AssertionError, match="multiple"):  # the global batch must split evenly
        _train([*args, "--batch", "3"], tmp_path / "odd", 2)
