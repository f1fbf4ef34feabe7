"""Mirror symmetry: the random flips of `invprox train --flip` and the self-ensemble of `--mirror`."""

import pytest
import torch

from invprox.physics import make_physics
from invprox.solvers.ensemble import mirror_averaged
from invprox.train.solver_setup import mirrored


def test_mirrored_flips_each_image_or_not_as_a_function_of_seed_and_step():
    x = torch.rand(64, 3, 5, 6)
    out = mirrored(x, seed=3, step=7)
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped ^ kept).all())  # itself or its mirror image (a random image is not both)
    assert 16 < int(flipped.sum()) < 48
    assert torch.equal(mirrored(x, seed=3, step=7), out)
    assert not torch.equal(mirrored(x, seed=3, step=8), out) and not torch.equal(mirrored(x, 4, 7), out)
    with pytest.raises(ValueError, match="B, C, H, W"):
        mirrored(x[0], 3, 7)


def test_mirror_refuses_an_operator_that_does_not_commute_with_the_mirror():
    run = mirror_averaged(lambda y, op, sigma: y)
    y = torch.rand(2, 1, 8, 8)
    blur = make_physics("deblurring", (1, 8, 8), blur="gaussian", std=1.0)
    assert run(blur.A(y), blur, 0.0).shape == y.shape  # a symmetric blur commutes with the mirror
    mask = make_physics("inpainting", (1, 8, 8), p_missing=0.5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="commutes with a left-right mirror"):
        run(mask.A(y), mask, 0.0)
