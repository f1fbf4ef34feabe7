"""Operators from elsewhere (deepinv-like float32 operators on their own device) and the task registry."""

import pytest
import torch

from invprox.physics import make_physics


class Float32Blur:
    """A stand-in for deepinv's ``Blur``: float32 kernel on its own device, refuses other dtypes."""

    def __init__(self, channels: int = 1):
        k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        self.weight = k.expand(channels, 1, 3, 3).contiguous()  # float32
        self.channels = channels

    def A(self, x):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"),
                                          self.weight, groups=self.channels)

    def A_adjoint(self, y):  # the kernel is symmetric: the adjoint is the same circular convolution
        return self.A(y)


def test_float32_foreign_operator_in_data_consistency_and_solver():
    from invprox.flows import Glow
    from invprox.physics import DataConsistency
    from invprox.solvers import FlowProxSolver

    op = Float32Blur()
    x = torch.rand(2, 1, 8, 8)
    y = op.A(x) + 0.01 * torch.randn(2, 1, 8, 8)
    dc = DataConsistency(op, mu_init=0.5)
    xt = dc(x, y)  # was: "expected scalar type Double but found Float" from a float64 norm estimate
    assert xt.dtype == torch.float32
    assert torch.allclose(dc.inverse(xt, y), x, atol=1e-4)
    torch.manual_seed(0)
    solver = FlowProxSolver(Glow(in_channels=1, image_size=8, levels=2, steps=1, hidden=4), op, K=2)
    out = solver(y)
    assert out.shape == x.shape and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    out.square().mean().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in solver.dc.parameters())


def test_one_task_registry_with_every_spelling():
    from invprox.physics import canonical_task

    assert canonical_task("Super-Resolution") == canonical_task("sr") == "superresolution"
    assert canonical_task("compressed sensing") == canonical_task("CS") == "compressed_sensing"
    assert canonical_task("denoising") == "denoising"
    with pytest.raises(ValueError, match="valid tasks are"):
        canonical_task("dehazing")
    with pytest.raises(TypeError, match="string"):
        canonical_task(3)
    assert type(make_physics("sr", (1, 8, 8))).__name__ == "SuperResolution"
