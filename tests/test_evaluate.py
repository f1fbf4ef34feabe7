"""`invprox eval`: outputs, a perfect model, determinism, references, errors; the labelled image grid."""

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from invprox.cli import main
from invprox.train import evaluate as ev
from invprox.train.evaluate import evaluate
from invprox.train.images import save_grid
from invprox.train.solver_train import train_solver


@pytest.fixture(scope="module")
def setup(tiny_data, tmp_path_factory):
    """The shared tiny data and Glow, and a resnet solver trained on them for one step."""
    out = tmp_path_factory.mktemp("eval") / "res"
    train_solver(tiny_data["data"], str(out), prox="resnet", size=8, channels=1, K=1,
                 features=4, n_blocks=1, batch=4, max_steps=1, progress=False, log=lambda s: None)
    return {"data": tiny_data["data"], "flow": tiny_data["flow"], "model": str(out / "solver.pt")}


class _Identity(nn.Module):
    """A "perfect" denoiser at sigma 0: returns the measurement (called as ``solver(y, physics)``)."""

    def forward(self, y, physics=None):
        return y


def test_eval_writes_csv_markdown_grid(setup, tmp_path):
    out = tmp_path / "ev"
    s = evaluate([setup["model"], setup["model"]], str(out), names=["res"], sigmas=[0.1, 0.2],
                 latent_map=True, flow=setup["flow"], lm_steps=2, progress=False, log=lambda m: None)
    assert s["methods"] == ["res", "resnet", "noisy input", "latent MAP"] and s["n_images"] == 4
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 4 * 2 * 4 and set(rows[0]) == {"method", "sigma", "index", "psnr", "ssim"}
    md = (out / "results.md").read_text()
    assert "| res |" in md and "| latent MAP |" in md and "| noisy input |" in md and "sigma 0.2" in md
    assert (out / "grid.png").stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["mean"]["res"]) == {"0.1", "0.2"}
    assert res["mean"]["res"] == res["mean"]["resnet"]  # same file, same inputs
    psnr01 = res["mean"]["res"]["0.1"]["psnr"]
    assert np.isfinite(psnr01) and psnr01 > res["mean"]["res"]["0.2"]["psnr"]


def test_perfect_model_and_determinism(setup, tmp_path, monkeypatch):
    cfg = {"task": "denoising", "physics_options": {}, "size": 8, "channels": 1, "prox": "identity",
           "data": setup["data"], "sigma": 0.0}
    monkeypatch.setattr(ev, "load_solver", lambda path, dev: (_Identity(), dict(cfg)))
    kw = dict(sigmas=[0.0, 0.1], progress=False, log=lambda m: None, grid_n=2)
    s = evaluate(["x"], str(tmp_path / "a"), batch=1, **kw)
    assert s["mean"]["identity"]["0"]["psnr"] == float("inf")
    assert s["mean"]["identity"]["0"]["ssim"] == pytest.approx(1.0)
    assert "inf" in (tmp_path / "a" / "results.md").read_text()
    evaluate(["x"], str(tmp_path / "b"), batch=3, **kw)  # other batching, same noise
    a, b = ((tmp_path / d / "per_image.csv").read_text() for d in "ab")
    assert a == b


def test_eval_cli_and_errors(setup, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["eval", "--model", setup["model"], "--sigmas", "0.2", "--limit", "2", "--out", str(out),
               "--no-progress"])
    assert rc == 0 and (out / "results.md").is_file()
    assert len(list(csv.DictReader(open(out / "per_image.csv")))) == 2 * 2  # the model and the input
    rc = main(["eval", "--out", str(out)])
    assert rc == 2 and "nothing to evaluate" in capsys.readouterr().err
    rc = main(["eval", "--model", str(tmp_path / "missing.pt"), "--out", str(out)])
    assert rc == 2 and "not found" in capsys.readouterr().err
    rc = main(["eval", "--latent-map", "--task", "denoising", "--size", "8", "--out", str(out)])
    assert rc == 2 and "--flow" in capsys.readouterr().err


def test_save_grid(tmp_path):
    rows = {"input": torch.rand(3, 1, 8, 8), "flow": torch.rand(3, 3, 8, 8), "truth": torch.rand(3, 1, 8, 8)}
    path = save_grid(rows, tmp_path / "g" / "grid.png", nrow=2, title="t")
    assert path.is_file()
    from PIL import Image

    w, h = Image.open(path).size
    assert w > h > 0
    with pytest.raises(ValueError, match="same image size"):
        save_grid({"a": torch.rand(1, 1, 8, 8), "b": torch.rand(1, 1, 4, 4)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="row 'a'"):
        save_grid({"a": torch.rand(8, 8)}, tmp_path / "x.png")


class _NaNFirst(_Identity):
    """Returns the measurement, except NaN for the first image of each batch."""

    def forward(self, y, physics=None):
        out = y.clone()
        out[0] = float("nan")
        return out


def test_non_finite_outputs_are_counted_not_hidden(setup, tmp_path, monkeypatch):
    cfg = {"task": "denoising", "physics_options": {}, "size": 8, "channels": 1, "prox": "nanfirst",
           "data": setup["data"], "sigma": 0.1}
    monkeypatch.setattr(ev, "load_solver", lambda path, dev: (_NaNFirst(), dict(cfg)))
    s = evaluate(["x"], str(tmp_path), batch=4, sigmas=[0.1], progress=False, log=lambda m: None, grid_n=2)
    m = s["mean"]["nanfirst"]["0.1"]
    assert m["n_finite"] == 3 and m["n"] == 4 and np.isfinite(m["psnr"])
    assert m["psnr"] == pytest.approx(s["mean"]["noisy input"]["0.1"]["psnr"], abs=3)
    assert "[3/4 finite]" in (tmp_path / "results.md").read_text()


def test_noise_adapted_scales_and_restores():
    """noise_adapted: the start weight and each lambda scaled by ratio**power inside, restored after (also
    after an error); refused where the solver lacks the part."""
    from invprox.solvers import LatentShrinkage
    from invprox.solvers.adapt import noise_adapted
    from invprox.solvers.start import SmoothStart

    solver = nn.Module()
    solver.smooth_start = SmoothStart(alpha=2.0)
    solver.shrink = nn.ModuleList([LatentShrinkage(0.5, levels=torch.tensor([0, 1, 1]))])
    solver.shrink[0].set_lam([0.5, 3.0])
    lam0 = solver.shrink[0].lam.detach().clone()
    with noise_adapted(solver, 2.0, start=1.0, lam=2.0):
        assert float(solver.smooth_start.alpha) == pytest.approx(4.0)
        assert torch.allclose(solver.shrink[0].lam, lam0 * 4.0, rtol=1e-5)
    assert float(solver.smooth_start.alpha) == 2.0 and torch.equal(solver.shrink[0].lam, lam0)
    with pytest.raises(RuntimeError, match="inside"), noise_adapted(solver, 0.5, start=2.0, lam=1.0):
        raise RuntimeError("inside")
    assert float(solver.smooth_start.alpha) == 2.0 and torch.equal(solver.shrink[0].lam, lam0)
    with noise_adapted(solver, 3.0):  # powers 0: nothing changes
        assert float(solver.smooth_start.alpha) == 2.0
    with pytest.raises(ValueError, match="positive noise-level ratio"), noise_adapted(solver, 0.0, start=1.0):
        pass
    bare = nn.Module()
    with pytest.raises(ValueError, match="smooth start"), noise_adapted(bare, 2.0, start=1.0):
        pass
    with pytest.raises(ValueError, match="latent shrinkage"), noise_adapted(bare, 2.0, lam=1.0):
        pass


def test_eval_adapts_the_start_to_each_noise_level(setup, tmp_path, monkeypatch):
    """--adapt-start P: at the training sigma nothing changes, elsewhere the outputs do; --adapt-lam leaves
    a CNN solver alone; a model without the smooth start is refused before any run."""
    kw = dict(sigmas=[0.1, 0.2], progress=False, log=lambda m: None, grid_n=2)
    plain = evaluate([setup["model"]], str(tmp_path / "plain"), **kw)["mean"]["resnet"]
    adapted = evaluate([setup["model"]], str(tmp_path / "adapted"), adapt_start=1.0, adapt_lam=2.0,
                       **kw)["mean"]["resnet"]
    assert adapted["0.2"] == plain["0.2"]
    assert adapted["0.1"]["psnr"] != plain["0.1"]["psnr"]
    rc = main(["eval", "--model", setup["model"], "--sigmas", "0.1", "--limit", "2", "--adapt-start", "1",
               "--out", str(tmp_path / "cli"), "--no-progress"])
    assert rc == 0
    cfg = {"task": "denoising", "physics_options": {}, "size": 8, "channels": 1, "prox": "identity",
           "data": setup["data"], "sigma": 0.2}
    monkeypatch.setattr(ev, "load_solver", lambda path, dev: (_Identity(), dict(cfg)))
    with pytest.raises(ValueError, match="smooth start"):
        evaluate(["x"], str(tmp_path / "bare"), adapt_start=1.0, **kw)


def test_eval_on_the_models_own_validation_images(tiny_data, tmp_path):
    from invprox.train.pretrain import solver_images
    from invprox.train.solver_setup import load_solver

    out = tmp_path / "h"
    train_solver(tiny_data["data"], str(out), prox="resnet", size=8, channels=1, K=1, features=4,
                 n_blocks=1, batch=4, max_steps=1, val_data="holdout", n_val=3, progress=False,
                 log=lambda s: None)
    _, cfg = load_solver(out / "solver.pt")
    xt, xv = solver_images(cfg)
    assert (len(xt), len(xv)) == (13, 3)  # 16 training images, the last 3 held out
    s = evaluate([str(out / "solver.pt")], str(tmp_path / "ev"), split="validation", sigmas=[0.1],
                 progress=False, log=lambda m: None)
    assert s["n_images"] == 3 and s["split"] == "validation"
    from invprox.data import make_dataset
    from invprox.train.loop_utils import dataset_tensor

    train = dataset_tensor(make_dataset(tiny_data["data"], size=8, channels=1, split="train"))
    assert torch.equal(xv, train[-3:]) and torch.equal(xt, train[:-3])
    with pytest.raises(ValueError, match="pass --model"):
        evaluate([], str(tmp_path / "e0"), split="validation", classical=True, progress=False,
                 log=lambda m: None)


class _LeftEdge(nn.Module):
    """Not mirror-equivariant: adds a ramp that rises from -0.1 on the left to 0.1 on the right."""

    def forward(self, y, physics=None):
        return y + torch.linspace(-0.1, 0.1, y.shape[-1], dtype=y.dtype)


def test_mirror_averages_outputs_on_the_mirrored_measurement(setup, tmp_path, monkeypatch):
    """--mirror: each output is the mean of the model's output on y and, mirrored back, on flip(y); a
    ramp x -> x + r with flip(r) = -r gives x exactly (it does not without --mirror), the real model's PSNR
    changes, and the results say the models were mirror-averaged."""
    cfg = {"task": "denoising", "physics_options": {}, "size": 8, "channels": 1, "prox": "ramp",
           "data": setup["data"], "sigma": 0.0}
    monkeypatch.setattr(ev, "load_solver", lambda path, dev: (_LeftEdge(), dict(cfg)))
    kw = dict(sigmas=[0.0], progress=False, log=lambda m: None)
    s = evaluate(["x"], str(tmp_path / "m"), mirror=True, **kw)
    assert s["mirror"] is True and s["mean"]["ramp"]["0"]["psnr"] > 100  # exact up to float32 rounding
    assert evaluate(["x"], str(tmp_path / "r"), **kw)["mean"]["ramp"]["0"]["psnr"] < 40
    assert "mirror-averaged" in (tmp_path / "m" / "results.md").read_text()
    monkeypatch.undo()
    plain = evaluate([setup["model"]], str(tmp_path / "p"), sigmas=[0.2], progress=False, log=lambda m: None)
    both = evaluate([setup["model"]], str(tmp_path / "b"), sigmas=[0.2], mirror=True, progress=False,
                    log=lambda m: None)
    assert plain["mean"]["resnet"]["0.2"]["psnr"] != both["mean"]["resnet"]["0.2"]["psnr"]
    assert np.isfinite(both["mean"]["resnet"]["0.2"]["psnr"]) and plain["mirror"] is False
