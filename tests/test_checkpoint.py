"""Atomic, checksummed checkpoints and RNG state capture."""

import random

import numpy as np
import pytest
import torch

from invprox.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest,
    previous_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
    verify_checkpoint,
)


def _state(step):
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 3)
    optim = {"state": {0: {"exp_avg": torch.randn(3, 4)}}, "param_groups": [{"lr": 1e-3}]}
    return {
        "step": step,
        "model": model.state_dict(),
        "optim": optim,
        "history": [0.5, 0.25],
        "name": "glow",
    }


def _assert_same(a, b):
    assert a.keys() == b.keys()
    assert a["step"] == b["step"] and a["history"] == b["history"] and a["name"] == b["name"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k])
    assert torch.equal(a["optim"]["state"][0]["exp_avg"], b["optim"]["state"][0]["exp_avg"])


def test_round_trip(tmp_path):
    path = tmp_path / "run" / "ckpt.pt"
    s = _state(1)
    assert save_checkpoint(path, s) == path
    _assert_same(load_checkpoint(path), s)
    verify_checkpoint(path)
    assert not previous_path(path).exists()
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temp files left


def test_previous_kept_and_used_when_newest_is_truncated(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _state(1))
    save_checkpoint(path, _state(2))
    assert load_checkpoint(previous_path(path))["step"] == 1
    assert load_checkpoint(path)["step"] == 2
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"ckpt\.pt is truncated"):
        load_checkpoint(path)
    with pytest.warns(RuntimeWarning, match=r"ckpt\.pt\.prev"):
        state, used = load_latest(path, return_path=True)
    assert state["step"] == 1 and used == previous_path(path)
    # saving over a corrupt newest file must not push the good .prev out
    with pytest.warns(RuntimeWarning, match="not keeping"):
        save_checkpoint(path, _state(3))
    assert load_checkpoint(path)["step"] == 3
    assert load_checkpoint(previous_path(path))["step"] == 1
    assert load_latest(path)["step"] == 3


def test_corrupt_byte_detected(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _state(1))
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"no usable checkpoint(?s:.*)missing"):
        load_latest(path)
    assert issubclass(CheckpointError, RuntimeError)


def test_missing_and_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_latest(tmp_path / "nothing.pt")
    with pytest.raises(TypeError, match="dict"):
        save_checkpoint(tmp_path / "x.pt", [1, 2])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage bytes")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not an invprox checkpoint"):
        verify_checkpoint(junk)


def test_plain_torch_file_loads(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.arange(3)}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(3))


def _draw():
    return (
        random.random(),
        float(np.random.rand()),
        float(np.random.randn()),
        torch.rand(3).tolist(),
    )


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    np.random.randn()  # leave a cached Gaussian in numpy's legacy state
    state = rng_state()
    expected = _draw()
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    _draw()
    set_rng_state(state)
    assert _draw() == expected
    _draw()
    set_rng_state(load_checkpoint(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert _draw() == expected
    with pytest.raises(TypeError):
        set_rng_state([1, 2])
