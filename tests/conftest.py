"""Shared test set-up: one torch thread (tiny tensors run faster and results are reproducible)."""

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_images(folder, n, seed, size=8):
    """``n`` smooth random gray ``size x size`` PNGs in ``folder``."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.2), rng.uniform(0.2, 1.2), rng.uniform(0, 6)
        img = (0.5 + 0.4 * np.sin(a * xx + b * yy + c)) * 255
        Image.fromarray(img.astype(np.uint8), "L").save(folder / f"{i:03d}.png")


def glow2(seed=0):
    """A float64 two-level Glow on 1x8x8 images with random weights and ActNorm initialised, in eval mode."""
    from invprox import testing
    from invprox.flows import Glow

    torch.manual_seed(seed)
    g = Glow(in_channels=1, image_size=8, levels=2, steps=1, hidden=4).to(torch.float64)
    testing.randomize_parameters(g, 0.1, seed=seed)
    with torch.no_grad():
        g.train()(torch.rand(8, 1, 8, 8, dtype=torch.float64) - 0.5)
    return g.eval()


def engine_matches_standard(solver, x, y, **options):
    """A float64 FlowProxSolver on ``glow2()`` (built with ``options``): its gradients through the engine
    equal those of the same solver under standard autograd."""
    from invprox import testing
    from invprox.solvers import FlowProxSolver

    standard = FlowProxSolver(glow2(), solver.physics, K=solver.K, memory_efficient=False, **options)
    standard = standard.to(torch.float64).eval()
    standard.load_state_dict(solver.state_dict())
    grads = []
    for s in (solver, standard):
        ((s(y) - x) ** 2).mean().backward()
        grads.append([p.grad for p in s.parameters()])
    assert testing.relative_error(*grads) < 1e-9


def noisy_pair(sigma=0.2):
    """A seeded float64 batch of 4 gray 8x8 images in [0.2, 0.8] and its noisy measurement: ``(x, y)``."""
    g = torch.Generator().manual_seed(3)
    x = 0.2 + 0.6 * torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64)
    return x, x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A folder of 8x8 gray images (train 16, val 4) and a tiny Glow with ActNorm initialised, saved."""
    from invprox.flows.glow import Glow

    root = tmp_path_factory.mktemp("tiny_data")
    write_images(root / "imgs" / "train", 16, 0)
    write_images(root / "imgs" / "val", 4, 1)
    torch.manual_seed(0)
    glow = Glow(in_channels=1, image_size=8, levels=1, steps=1, hidden=4)
    with torch.no_grad():  # ActNorm data init, as after pre-training
        glow.train()(glow.preprocess(torch.rand(8, 1, 8, 8)))
    glow.save(root / "flow.pt")
    return {"root": root, "data": str(root / "imgs"), "flow": str(root / "flow.pt")}


def train_kw(tiny_data, **over):
    """Keyword arguments of ``train_solver`` for a short run on ``tiny_data`` (one fold, its Glow)."""
    kw = dict(data=tiny_data["data"], size=8, channels=1, K=1, batch=4, epochs=2, progress=False,
              log=lambda s: None, flow=tiny_data["flow"], lr_net=1e-3)
    kw.update(over)
    return kw


def flow_train_kw(tiny_data, **over):
    """:func:`train_kw` for a two-step flow-prox run calibrated on 4 pairs."""
    return train_kw(tiny_data, **{"calibrate": 4, "max_steps": 2, "prox": "flow", **over})
