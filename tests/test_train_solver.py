"""`invprox train`: outputs, learning, exact resume, refused checkpoints, non-finite loss, CLI errors."""

import json

import numpy as np
import pytest
import torch
from conftest import train_kw as _kw

from invprox.cli import main
from invprox.train import CheckpointError, load_checkpoint, solver_train
from invprox.train.loop_utils import lr_factor
from invprox.train.solver_setup import fixed_measurements, load_solver, physics_options
from invprox.train.solver_train import NonFiniteLossError, train_solver


@pytest.fixture(scope="module")
def setup(tiny_data):
    return tiny_data


def test_train_flow_writes_checkpoint_solver_metrics(setup, tmp_path):
    out = tmp_path / "run"
    m = train_solver(out=str(out), **_kw(setup, K=2, max_steps=3))
    for f in ("checkpoint.pt", "solver.pt", "metrics.json"):
        assert (out / f).is_file()
    assert m["steps"] == 3 and m["status"] == "max_steps"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["val"][-1]["step"] == 3 and np.isfinite(saved["best_val_loss"])
    # the machine is named, down to the vector instructions torch uses (VMs of one model name differ there)
    assert saved["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert saved["machine"]["torch"] == torch.__version__ and saved["machine"]["cpu"]
    solver, cfg = load_solver(out / "solver.pt")  # rebuilt from the file alone (flow config inside)
    assert cfg["prox"] == "flow" and cfg["K"] == 2
    groups = fixed_measurements(torch.rand(2, 1, 8, 8), [0, 1], "denoising", {}, 0.1, 0)
    with torch.no_grad():
        assert solver(groups[0][2]).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("prox", ["flow", "unet"])
def test_channels_last_trains_like_contiguous(setup, tmp_path, prox):
    """--channels-last changes the memory layout only: the same steps give the same validation losses (up to
    float32 rounding of other convolution kernels), and the weights are kept channels-last."""
    kw = _kw(setup, prox=prox, max_steps=3, val_every=1, patience=0, standard_autograd=True)
    if prox == "unet":
        kw.update(features=4, depth=1)
    ref = train_solver(out=str(tmp_path / "contiguous"), **kw)
    m = train_solver(out=str(tmp_path / "channels_last"), channels_last=True, **kw)
    a, b = [v["val_loss"] for v in ref["val"]], [v["val_loss"] for v in m["val"]]
    assert len(a) == len(b) == 3 and np.allclose(a, b, rtol=1e-3), (a, b)
    state = load_checkpoint(tmp_path / "channels_last" / "checkpoint.pt")["model"]
    convs = [t for t in state.values() if t.dim() == 4 and t.shape[1] > 1 and t.shape[-1] > 1]
    assert convs and all(t.is_contiguous(memory_format=torch.channels_last) for t in convs)


def test_train_baseline_inpainting(setup, tmp_path):
    out = tmp_path / "res"
    m = train_solver(out=str(out), **_kw(setup, prox="resnet", task="inpainting", p_missing=0.3,
                                         features=4, n_blocks=1, max_steps=4, lr_net=1e-2))
    assert m["history"][0]["step"] == 4 and len(m["val"]) == 1
    solver, cfg = load_solver(out / "solver.pt")
    assert cfg["task"] == "inpainting" and cfg["physics_options"] == {"p_missing": 0.3}


def test_validation_loss_decreases(setup, tmp_path):
    # from the paper's start (the flow's mode, uncalibrated): far from the images, so learning shows
    m = train_solver(out=str(tmp_path / "dec"), **_kw(setup, epochs=6, val_every=4, lr_net=1e-2,
                                                        lr_step=5e-2, patience=0, start="paper",
                                                        calibrate=0, clip_grad=0))
    losses = [v["val_loss"] for v in m["val"]]
    assert len(losses) == 6 and losses[-1] < 0.95 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


@pytest.mark.parametrize("flip", [False, True])
def test_resume_is_exact(setup, tmp_path, flip):
    kw = _kw(setup, task="inpainting", p_missing=0.3, val_every=3, epochs=3, lr_net=1e-2, flip=flip)
    full = tmp_path / "full"
    train_solver(out=str(full), max_steps=6, **kw)
    part = tmp_path / "part"
    train_solver(out=str(part), max_steps=2, **kw)  # stops in the middle of epoch 1
    assert load_checkpoint(part / "checkpoint.pt")["run"]["step"] == 2
    train_solver(out=str(part), max_steps=6, resume=True, **kw)
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    assert a["run"]["step"] == b["run"]["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for (i, sa), sb in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]), i


def test_flip_changes_the_training_batches(setup, tmp_path):
    kw = _kw(setup, prox="resnet", features=4, n_blocks=1, max_steps=4, val_every=2, patience=0, lr_net=1e-2)
    a = train_solver(out=str(tmp_path / "plain"), **kw)
    b = train_solver(out=str(tmp_path / "flip"), flip=True, **kw)
    assert b["config"]["flip"] is True and a["config"]["flip"] is False
    assert a["val"][-1]["val_loss"] != b["val"][-1]["val_loss"]


def test_cosine_schedule_with_warmup_follows_the_steps(setup, tmp_path):
    """Validation after every step records the networks' learning rate of that step: a linear warm-up over
    two steps, then the cosine over the run's 6 steps; the step parameters' group is scaled alike."""
    m = train_solver(out=str(tmp_path / "cos"), **_kw(setup, prox="resnet", features=4, n_blocks=1,
                                                       max_steps=6, val_every=1, patience=0,
                                                       lr_schedule="cosine", warmup=2))
    lrs = [v["lr_net"] for v in m["val"]]
    want = [1e-3 * lr_factor("cosine", 2, s, s / 6) for s in range(6)]
    assert np.allclose(lrs, want, rtol=1e-12), (lrs, want)
    assert lrs[0] == pytest.approx(0.5e-3) and lrs[-1] < 0.1e-3
    state = load_checkpoint(tmp_path / "cos" / "checkpoint.pt")["optimizer"]["param_groups"]
    assert state[1]["lr"] == pytest.approx(10 * want[-1]) and state[1]["initial_lr"] == 1e-2  # lr_step 1e-2


def test_resume_after_a_crash_continues_the_schedule(setup, tmp_path, monkeypatch):
    """A run killed at step 5 (after a checkpoint at a validation or an epoch's end) and resumed with the
    same options ends where the uninterrupted run ends: the warm-up and cosine are functions of the step and
    the budget used."""
    kw = _kw(setup, prox="resnet", features=4, n_blocks=1, val_every=3, max_steps=6, lr_net=1e-2,
             lr_schedule="cosine", warmup=2)
    train_solver(out=str(tmp_path / "full"), **kw)
    real = solver_train.build_solver

    def crashing(*args, **kwargs):
        solver, forward, calls = real(*args, **kwargs), None, [0]
        forward = solver.forward

        def fwd(y, physics=None):
            calls[0] += solver.training
            if calls[0] == 5:
                raise KeyboardInterrupt
            return forward(y, physics)

        solver.forward = fwd
        return solver

    monkeypatch.setattr(solver_train, "build_solver", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_solver(out=str(tmp_path / "part"), **kw)
    monkeypatch.setattr(solver_train, "build_solver", real)
    assert 0 < load_checkpoint(tmp_path / "part" / "checkpoint.pt")["run"]["step"] < 5
    train_solver(out=str(tmp_path / "part"), resume=True, **kw)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("full", "part"))
    assert a["run"]["step"] == b["run"]["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    lrs = [[g["lr"] for g in c["optimizer"]["param_groups"]] for c in (a, b)]
    assert lrs[0] == lrs[1]


def test_cosine_schedule_follows_the_budget(setup, tmp_path):
    """Ended by a CPU budget, the cosine follows the budget used: the rate falls at every validation and is
    near 0 at the last step."""
    m = train_solver(out=str(tmp_path / "budget"), **_kw(setup, prox="resnet", features=4, n_blocks=1,
                                                          epochs=10_000, budget_minutes=0.01, val_every=1,
                                                          patience=0, lr_schedule="cosine"))
    lrs = [v["lr_net"] for v in m["val"]]
    assert m["status"] == "budget" and len(lrs) > 3
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.25e-3, lrs


@pytest.mark.parametrize("bad, match", [({"lr_schedule": "step"}, "lr_schedule"),
                                        ({"warmup": -1}, "warmup"),
                                        ({"lr_split": 1e-4, "prox": "resnet", "features": 4, "n_blocks": 1},
                                         "lr_split"),
                                        ({"lr_coupling": 1e-4, "prox": "unet", "features": 4, "depth": 1},
                                         "lr_coupling is an option of the flow prox")])
def test_bad_schedule_is_refused(setup, tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        train_solver(out=str(tmp_path / "bad"), **_kw(setup, max_steps=1, **bad))


def test_adam_is_fused_where_torch_has_the_kernel():
    """Training's Adam: one fused kernel for CPU parameters, torch's loop elsewhere; the update is Adam's
    (float64: equal to the loop to rounding), and a run resumed from its checkpoint stays exact
    (test_resume_is_exact)."""
    from invprox.train.loop_utils import adam

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused, loop = adam([{"params": params[:2]}, {"params": params[2:], "lr": 1e-2}], lr=1e-3), \
        torch.optim.Adam([{"params": twins[:2]}, {"params": twins[2:], "lr": 1e-2}], lr=1e-3, foreach=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    for _ in range(3):
        for p, q in zip(params, twins):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert not adam([torch.nn.Parameter(torch.zeros(2, device="meta"))]).defaults["fused"]


def test_flow_options_table():
    """Each option of FLOW_ARCH is an argument of FlowProxSolver, whose default its normaliser gives for a
    config that predates the option (key absent), and is refused for a CNN prox when set."""
    import inspect

    from invprox.solvers.flow_prox import FlowProxSolver
    from invprox.train.solver_setup import FLOW_ARCH, check_config

    params = inspect.signature(FlowProxSolver).parameters
    base = {"prox": "unet", "K": 1, "batch": 1, "epochs": 1, "size": 8, "lr_schedule": "constant",
            "warmup": 0, "calibrate": 0, "sigma": 0.1}
    check_config(base)
    for key, norm in FLOW_ARCH.items():
        assert key in params and norm(None) == norm(params[key].default), key
        with pytest.raises(ValueError, match=f"{key} is an option of the flow prox"):
            check_config({**base, key: 2 if key == "cond_net" else True})


def test_corrupt_checkpoint_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "bad"
    train_solver(out=str(out), **_kw(setup, prox="resnet", features=4, n_blocks=1, max_steps=1))
    for f in ("checkpoint.pt", "checkpoint.pt.prev"):
        p = out / f
        if p.exists():
            raw = bytearray(p.read_bytes())
            raw[-10] ^= 0xFF
            p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        train_solver(out=str(out), resume=True, **_kw(setup, prox="resnet", features=4, n_blocks=1))
    rc = main(["train", "--data", setup["data"], "--size", "8", "--channels", "1", "--prox", "resnet",
               "--out", str(out), "--resume", "--no-progress"])
    assert rc == 2 and "corrupt" in capsys.readouterr().err


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(setup, tmp_path, monkeypatch):
    real = solver_train.build_solver

    def poisoned(*args, **kw):
        solver = real(*args, **kw)
        forward, calls = solver.forward, [0]

        def fwd(y, physics=None):
            out = forward(y, physics)
            calls[0] += solver.training
            return out * float("nan") if calls[0] > 2 else out

        solver.forward = fwd
        return solver

    monkeypatch.setattr(solver_train, "build_solver", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="step 3") as err:
        train_solver(out=str(out), **_kw(setup, prox="resnet", features=4, n_blocks=1, val_every=1))
    assert "last good state (step 2)" in str(err.value)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["run"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert json.loads((out / "metrics.json").read_text())["status"] == "non_finite"


def test_nonfinite_steps_skipped_up_to_a_limit(setup, tmp_path, monkeypatch):
    """skip_nonfinite=N: a non-finite step makes no update and is listed; N + 1 in a row stop the run."""
    real = solver_train.build_solver

    def poisoned_at(bad_calls):
        def build(*args, **kw):
            solver = real(*args, **kw)
            forward, calls = solver.forward, [0]

            def fwd(y, physics=None):
                out = forward(y, physics)
                calls[0] += solver.training
                return out * float("nan") if solver.training and calls[0] in bad_calls else out

            solver.forward = fwd
            return solver
        return build

    monkeypatch.setattr(solver_train, "build_solver", poisoned_at({3}))
    kw = _kw(setup, prox="resnet", features=4, n_blocks=1, max_steps=5, skip_nonfinite=1)
    m = train_solver(out=str(tmp_path / "one"), **kw)
    assert m["steps"] == 5 and [s["step"] for s in m["skipped_steps"]] == [3]
    assert "training loss is nan" in m["skipped_steps"][0]["why"]
    monkeypatch.setattr(solver_train, "build_solver", poisoned_at({3, 4}))
    with pytest.raises(NonFiniteLossError, match="step 4"):
        train_solver(out=str(tmp_path / "two"), **kw)


def test_nonfinite_validation_stops_and_says_so(setup, tmp_path, monkeypatch):
    real = solver_train.build_solver

    def poisoned(*args, **kw):
        solver = real(*args, **kw)
        forward = solver.forward
        def fwd(y, physics=None):
            return forward(y, physics) * (1 if solver.training else float("nan"))

        solver.forward = fwd
        return solver

    monkeypatch.setattr(solver_train, "build_solver", poisoned)
    out = tmp_path / "val"
    with pytest.raises(NonFiniteLossError, match="validation loss is nan"):
        train_solver(out=str(out), **_kw(setup, prox="resnet", features=4, n_blocks=1, max_steps=2,
                                         val_every=1))
    assert json.loads((out / "metrics.json").read_text())["status"] == "non_finite"


@pytest.mark.parametrize("cmd", ["train", "eval", "pretrain"])
def test_cli_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and f"usage: invprox {cmd}" in out
    options = " ".join(out.split()).split(" -")  # one entry per option, its help's lines joined
    if cmd == "train":
        assert "--K K                 number of folds (default: 4)" in out  # argparse's defaults are shown
    assert not [o for o in options if o.count("default:") > 1]  # once, where the help states its own


@pytest.mark.parametrize("argv, message", [
    (["--task", "denoize"], "unknown task 'denoize'"),
    (["--data", "/no/such/folder", "--prox", "resnet"], "/no/such/folder"),
    (["--data", "EMPTY", "--prox", "resnet"], "no images"),
    (["--prox", "flow"], "--flow PATH"),
    (["--flow", "/no/such/flow.pt"], "not found"),
])
def test_cli_errors_are_readable(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    rc = main(["train", "--size", "8", "--channels", "1", "--out", str(tmp_path / "o"), "--no-progress",
               *argv])
    err = capsys.readouterr().err
    assert rc == 2 and "invprox train: error:" in err and message in err
    assert "Traceback" not in err


def test_existing_run_needs_resume(setup, tmp_path):
    out = tmp_path / "again"
    train_solver(out=str(out), **_kw(setup, prox="resnet", features=4, n_blocks=1, max_steps=1))
    with pytest.raises(ValueError, match="--resume"):
        train_solver(out=str(out), **_kw(setup, prox="resnet", features=4, n_blocks=1, max_steps=1))


def test_fixed_measurements_do_not_depend_on_batching():
    x = torch.rand(5, 1, 8, 8)
    for task in ("denoising", "inpainting"):
        opts = physics_options(task)
        one = torch.cat([g[2] for g in fixed_measurements(x, range(5), task, opts, 0.1, 3, batch=1)])
        many = torch.cat([g[2] for g in fixed_measurements(x, range(5), task, opts, 0.1, 3, batch=4)])
        assert torch.equal(one, many)
        other = torch.cat([g[2] for g in fixed_measurements(x, range(5), task, opts, 0.1, 4, batch=4)])
        assert not torch.equal(one, other)


def test_early_stopping(setup, tmp_path, monkeypatch):
    losses = iter([0.5, 0.4, 0.45, 0.46, 0.47, 0.48])
    monkeypatch.setattr(solver_train, "_validate",
                        lambda *a: {"val_loss": next(losses), "val_psnr": 0.0})
    m = train_solver(out=str(tmp_path / "es"), **_kw(setup, prox="resnet", features=4, n_blocks=1,
                                                       val_every=1, patience=2, epochs=5))
    assert m["status"] == "early_stopped" and m["steps"] == 4
    assert m["best_step"] == 2 and m["best_val_loss"] == 0.4


def test_progress_counts_seconds_for_a_budget_and_is_quiet_off_a_terminal():
    from invprox.train.loop_utils import Progress

    used = [0.0]
    bar = Progress(1_000_000, 0, "train", True, seconds=120.0, used=lambda: used[0])
    assert bar.bar.disable  # pytest's output is not a terminal: no carriage returns in a log
    used[0] = 30.0
    bar.update(loss="0.1")
    assert bar.bar.total == 120.0 and bar.bar.n == 30.0 and bar.step == 1
    steps = Progress(10, 2, "train", False)
    steps.update()
    assert steps.step == 3 and steps.bar.total == 10
    bar.close()
    steps.close()


def test_thread_count_follows_the_idle_cpus(monkeypatch):
    from invprox import cli

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (1.1, 1.0, 1.0), raising=False)
    assert cli.pick_threads() == 1  # one of two cores busy
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.1, 0.0, 0.0), raising=False)
    assert cli.pick_threads() == 2
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (7.0, 7.0, 7.0), raising=False)
    assert cli.pick_threads() == 1
    assert cli.pick_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli.pick_threads() == 1
