"""Glow pre-training: outputs, learning, exact resume, command line."""

from __future__ import annotations

import json

import pytest
import torch

from invprox.checkpoint import load_checkpoint
from invprox.cli import main
from invprox.flows import Glow
from invprox.train.pretrain import load_images, pretrain

TINY = dict(size=8, channels=3, levels=2, steps=1, hidden=8, warmup=0, progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Nine smooth random 12x12 RGB PNGs (a folder without train/val split: the last one validates)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pngs")
    g = torch.Generator().manual_seed(0)
    for i in range(9):
        low = torch.rand(3, 3, 3, generator=g)
        img = torch.nn.functional.interpolate(low[None], size=(12, 12), mode="bilinear")[0]
        arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(root / f"img{i}.png")
    return root


def test_outputs_on_a_folder(folder, tmp_path):
    out = tmp_path / "run"
    m = pretrain(str(folder), str(out), batch=4, epochs=1, **TINY)
    for name in ("checkpoint.pt", "flow.pt", "metrics.json", "samples.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["final_val_bpd"] == pytest.approx(m["final_val_bpd"])
    assert saved["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m["n_train"] == 8 and m["n_val"] == 1 and m["steps"] == 2
    assert len(m["history"]) == 1 and 0 < m["final_val_bpd"] < 20
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "step", "rng", "noise_rng"} <= set(ckpt)
    glow = Glow.load(out / "flow.pt")
    assert glow.config["image_size"] == [8, 8] and glow.sample(2).shape == (2, 3, 8, 8)
    xv = load_images(str(folder), 8, 3)[1]
    with torch.no_grad():
        bpd = glow.nll_bpd(xv, generator=torch.Generator().manual_seed(12345))
    assert float(bpd.mean()) == pytest.approx(m["final_val_bpd"], rel=1e-5)


def test_embedded_data(tmp_path):
    pytest.importorskip("skimage")
    m = pretrain("embedded", str(tmp_path / "emb"), n_train=8, n_val=4, batch=4, max_steps=1, **TINY)
    assert m["steps"] == 1 and m["stopped_early"] and (tmp_path / "emb" / "flow.pt").is_file()


def test_bpd_decreases_on_a_fixed_batch(folder, tmp_path):
    """One batch of the same 8 images at every step: the training bits/dim fall clearly."""
    m = pretrain(str(folder), str(tmp_path / "fit"), batch=8, epochs=30, lr=5e-3, **TINY)
    curve = [b for _, b in m["train_curve"]]
    assert len(curve) == 30
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last < first - 0.5, (first, last)


def test_resume_is_exact(folder, tmp_path):
    kw = dict(batch=4, epochs=3, **TINY)  # 2 steps per epoch; stop in the middle of epoch 2
    full = pretrain(str(folder), str(tmp_path / "a"), max_steps=6, **kw)
    part = pretrain(str(folder), str(tmp_path / "b"), max_steps=3, **kw)
    assert part["steps"] == 3 and part["stopped_early"]
    again = pretrain(str(folder), str(tmp_path / "b"), max_steps=6, resume=True, **kw)
    assert again["steps"] == 6 and again["train_curve"] == full["train_curve"]
    a = Glow.load(tmp_path / "a" / "flow.pt").state_dict()
    b = Glow.load(tmp_path / "b" / "flow.pt").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert again["final_val_bpd"] == full["final_val_bpd"]


def test_command_line(folder, tmp_path):
    out = tmp_path / "cli"
    args = ["pretrain", "--data", str(folder), "--out", str(out), "--size", "8", "--levels", "2",
            "--steps", "1", "--hidden", "8", "--batch", "4", "--max-steps", "2", "--no-progress",
            "--standard-autograd", "--n-bits", "8", "--prior", "laplace", "--coupling", "additive"]
    assert main(args) == 0
    glow = Glow.load(out / "flow.pt")
    assert glow.config["prior"] == "laplace" and glow.config["n_bits"] == 8
    assert main(["pretrain", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert main(["pretrain", "--data", str(folder), "--out", str(tmp_path / "none"), "--resume"]) == 2


def test_init_continues_a_saved_flow(folder, tmp_path):
    """``init=flow.pt`` starts from the saved weights (its settings win) and trains them further."""
    first = pretrain(str(folder), str(tmp_path / "a"), batch=8, epochs=10, lr=5e-3, **TINY)
    more = pretrain(str(folder), str(tmp_path / "b"), batch=8, epochs=10, lr=5e-3,
                    init=str(tmp_path / "a" / "flow.pt"), **{**TINY, "hidden": 4})
    assert Glow.load(tmp_path / "b" / "flow.pt").config["hidden"] == 8
    # the first step of the continued run starts where the first run ended, not from scratch
    assert more["train_curve"][0][1] < first["train_curve"][0][1] - 0.5
    with pytest.raises(ValueError, match="not both"):
        pretrain(str(folder), str(tmp_path / "a"), init=str(tmp_path / "a" / "flow.pt"), resume=True,
                 **TINY)


def test_nonfinite_steps_skipped_then_stop(folder, tmp_path, monkeypatch):
    """The trainers' one policy: up to skip_nonfinite bad steps in a row are skipped, the next one stops."""
    real, calls = Glow.nll_bpd, [0]

    def flaky(self, x, **kw):
        out = real(self, x, **kw)
        step = self.training and torch.is_grad_enabled()  # a training step, not the data init or validation
        calls[0] += step
        return out * float("nan") if step and calls[0] in bad else out

    monkeypatch.setattr(Glow, "nll_bpd", flaky)
    bad = {2}
    m = pretrain(str(folder), str(tmp_path / "a"), batch=4, epochs=2, skip_nonfinite=1, **TINY)
    assert m["steps"] == 4 and [s["step"] for s in m["skipped_steps"]] == [2]
    calls[0], bad = 0, {2, 3}
    with pytest.raises(RuntimeError, match="non-finite steps in a row"):
        pretrain(str(folder), str(tmp_path / "b"), batch=4, epochs=2, skip_nonfinite=1, **TINY)
