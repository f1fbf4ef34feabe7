"""Every example runs end to end with ``--tiny`` and writes its outputs (examples/README.md lists them).

Each script is imported by path and its ``main(argv)`` called in-process, so the pre-trained Glow is read
from disk once for the whole file (``examples/_common.py`` caches it). The whole file takes about 15 s
on a busy 2-core CPU.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import pathlib
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
FLOW = EXAMPLES.parent / "benchmarks" / "results" / "glow_celeba32.pt"
needs_flow = pytest.mark.skipif(not FLOW.is_file(), reason=f"the pre-trained Glow {FLOW} is missing")


def _import(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _examples_common():
    """``examples/_common.py``, imported once (it caches the loaded Glow for the whole file)."""
    return _import(EXAMPLES / "_common.py", "_common")


@pytest.fixture
def load(monkeypatch):
    """Import ``examples/<name>.py`` as a module.

    The scripts do ``from _common import ...``; ``sys.modules["_common"]`` is pointed at the examples'
    own for the test (``benchmarks/`` has a ``_common`` module too) and restored afterwards.
    """
    monkeypatch.setitem(sys.modules, "_common", _examples_common())
    return lambda name: _import(EXAMPLES / f"{name}.py", f"example_{name}")


def _finite_psnr(out: pathlib.Path) -> dict:
    assert (out / "grid.png").stat().st_size > 0
    psnr = json.loads((out / "metrics.json").read_text())["psnr"]
    assert psnr and all(math.isfinite(v) for v in psnr.values()), psnr
    return psnr


def test_engine_irim(load, tmp_path):
    result = load("engine_irim").main(["--tiny", "--out", str(tmp_path)])
    small, large = result["memory"]
    # the engine's saved bytes do not grow with depth; standard autograd's grow with it
    assert large["invprox_bytes"] == small["invprox_bytes"]
    assert large["standard_bytes"] > 3 * small["standard_bytes"]
    assert max(result["grad_rel_error"].values()) < 1e-4
    assert (tmp_path / "memory.json").is_file()
    _finite_psnr(tmp_path)


def test_custom_block(load, tmp_path):
    results = load("custom_block").main(["--tiny", "--out", str(tmp_path)])
    assert all(r["passed"] != r["expected_to_fail"] for r in results)
    assert len(json.loads((tmp_path / "checks.json").read_text())) == len(results)


FACE_EXAMPLES = ["denoise_faces", "inpainting", "deblurring", "compressed_sensing", "latent_map"]


@needs_flow
@pytest.mark.parametrize("name", FACE_EXAMPLES)
def test_face_example(load, tmp_path, name):
    scores = load(name).main(["--tiny", "--out", str(tmp_path)])
    assert scores == _finite_psnr(tmp_path)


@needs_flow
def test_face_example_without_faces_falls_back_to_embedded(load, tmp_path, capsys):
    missing = tmp_path / "no_such_faces"
    load("latent_map").main(["--tiny", "--data", str(missing), "--out", str(tmp_path / "out")])
    assert "falling back to the embedded" in capsys.readouterr().out
    _finite_psnr(tmp_path / "out")


def test_ddp_train_single_process(load, tmp_path):
    """examples/ddp_train.py (its owner's script) in its plain single-process mode, made tiny by its flags."""
    ckpt = tmp_path / "ddp.pt"
    argv = ["--steps", "1", "--batch", "2", "--K", "1", "--data", "synthetic", "--checkpoint", str(ckpt)]
    assert load("ddp_train").main(argv) == 0
    assert ckpt.is_file()
