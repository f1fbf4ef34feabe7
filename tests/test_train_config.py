"""Every ``invprox train`` option is declared once, in TrainConfig; the command line is made from it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from invprox.train.config import TrainConfig, add_arguments
from invprox.train.solver_train import train_solver


def test_command_line_is_generated_from_the_config():
    p = argparse.ArgumentParser()
    add_arguments(p)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    dests = {a.dest for a in p._actions if a.dest != "help"}
    assert dests == set(fields)
    args = p.parse_args(["--K", "2", "--lr-net", "3e-4", "--tied", "--keep-every", "none", "--prox", "unet"])
    cfg = TrainConfig(**vars(args))
    assert (cfg.K, cfg.lr_net, cfg.tied, cfg.keep_every, cfg.prox) == (2, 3e-4, True, None, "unet")
    assert TrainConfig(**vars(p.parse_args([]))) == TrainConfig()  # the same defaults both ways
    with pytest.raises(SystemExit):
        p.parse_args(["--keep-every", "0"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.K = 3


def test_unknown_option_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="learning_rate"):
        train_solver("embedded", str(tmp_path / "x"), learning_rate=1e-3)


def test_one_policy_for_non_finite_steps():
    from invprox.train.loop_utils import NonFiniteSteps

    guard = NonFiniteSteps(2)
    assert guard.check(0.5, 3.0) is None and "loss" in guard.check(float("nan"))
    assert "gradient" in guard.check(0.5, float("inf"))
    assert guard.skip(1, "x") and guard.skip(2, "x") and not guard.skip(3, "x")  # the third in a row stops
    guard.good()
    assert guard.skip(4, "x") and [s["step"] for s in guard.skipped] == [1, 2, 4]
    with pytest.raises(ValueError):
        NonFiniteSteps(-1)
