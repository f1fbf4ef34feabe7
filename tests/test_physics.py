"""Tests of invprox.physics: adjoints, norms, the exact DC inverse, the DC block and its log-determinant."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from invprox.core.block import check_block, inverse_logdet, rebuild
from invprox.physics import (
    TASKS,
    CompressedSensing,
    DataConsistency,
    Deblurring,
    Denoising,
    Inpainting,
    LinearOperator,
    SuperResolution,
    box_mask,
    conjugate_gradient,
    dc_inverse,
    dc_logdet,
    dc_step,
    gaussian_kernel,
    gram_eigenvalues,
    make_physics,
    motion_kernel,
    power_iteration,
    random_mask,
)

D = torch.float64
SHAPE = (2, 3, 8, 8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_ops():
    g = gen(1)
    return {
        "denoising": Denoising(),
        "inpainting": Inpainting(random_mask((8, 8), 0.3, g)),
        "inpainting_batched": Inpainting(random_mask((2, 3, 8, 8), 0.4, g)),
        "deblur_gauss": Deblurring(gaussian_kernel(5, 1.0)),
        "deblur_motion": Deblurring(motion_kernel(5, 30.0)),
        "deblur_signed": Deblurring(torch.randn(3, 4, generator=g, dtype=D)),
        "sr": SuperResolution(2),
        "sr_blur": SuperResolution(2, gaussian_kernel(5, 1.0)),
        "cs_under": CompressedSensing(60, (3, 8, 8), seed=0, dtype=D),
        "cs_over": CompressedSensing(250, (3, 8, 8), seed=0, dtype=D),
    }


OPS = make_ops()
PER_SAMPLE_OPS = {"inpainting_batched"}  # buffers differ per sample: no dense single-image matrix


class DuckOp:
    """A foreign operator: only A and A_adjoint (like a deepinv Physics), here a fixed linear map."""

    def __init__(self, n: int = 3 * 8 * 8, m: int = 100, seed: int = 3):
        self.mat = torch.randn(m, n, generator=gen(seed), dtype=D) / m**0.5

    def A(self, x):
        return x.reshape(x.shape[0], -1) @ self.mat.T

    def A_adjoint(self, y):
        return (y @ self.mat).reshape(y.shape[0], *SHAPE[1:])


def rand(shape, seed=0):
    return torch.randn(shape, generator=gen(seed), dtype=D)


def dense_gram(op, sample_shape=SHAPE[1:]):
    return gram_eigenvalues(op.AtA, sample_shape, dtype=D)


# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPS))
def test_adjointness(name):
    assert OPS[name].adjointness_error(SHAPE, gen(2)) < 1e-10


@pytest.mark.parametrize("name", sorted(OPS))
def test_norm_sq_matches_power_iteration_and_dense(name):
    op = OPS[name]
    L = op.norm_sq(SHAPE)
    Lp = power_iteration(op.AtA, SHAPE, max_iter=3000, tol=1e-14)
    assert L == pytest.approx(Lp, rel=1e-6)
    if name not in PER_SAMPLE_OPS:
        assert L == pytest.approx(float(dense_gram(op).max()), rel=1e-10)


def test_norm_sq_without_shape():
    assert Deblurring(gaussian_kernel(5, 1.0)).norm_sq() == pytest.approx(1.0, rel=1e-6)
    signed = Deblurring(torch.randn(3, 3, generator=gen(0)))
    with pytest.raises(ValueError, match="shape"):
        signed.norm_sq()
    known = Deblurring(signed.kernel, img_size=(8, 8))
    assert known.norm_sq() == pytest.approx(signed.norm_sq((1, 1, 8, 8)))
    assert CompressedSensing(10, (4, 4), seed=0).norm_sq() > 0


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("method", ["auto", "cg"])
def test_dc_inverse_is_exact(name, method):
    op = OPS[name]
    x, y = rand(SHAPE, 1), op.A(rand(SHAPE, 2))
    mu = 0.8 / op.norm_sq(SHAPE)
    xt = dc_step(op, x, y, mu)
    assert torch.allclose(dc_inverse(op, xt, y, mu, method=method), x, rtol=0, atol=1e-8)
    per_sample = torch.tensor([0.3, 0.9], dtype=D) / op.norm_sq(SHAPE)
    xt = dc_step(op, x, y, per_sample)
    assert torch.allclose(dc_inverse(op, xt, y, per_sample, method=method), x, rtol=0, atol=1e-8)


def test_dc_inverse_duck_typed():
    op = DuckOp()
    x = rand(SHAPE, 1)
    y = op.A(rand(SHAPE, 2))
    L = float(torch.linalg.matrix_norm(op.mat, ord=2) ** 2)
    mu = 0.9 / L
    xt = dc_step(op, x, y, mu)
    assert torch.allclose(dc_inverse(op, xt, y, mu), x, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="1/\\|\\|A\\|\\|"):
        dc_inverse(op, xt, y, 1.1 / L)
    with pytest.raises(TypeError, match="A_adjoint"):
        dc_step(object(), x, y, mu)


def test_dc_inverse_rejects_bad_mu():
    op, x = Denoising(), rand(SHAPE)
    for mu in (0.0, -0.1, 1.0, 2.0, torch.tensor([0.5, 1.2], dtype=D)):
        with pytest.raises(ValueError, match="mu"):
            dc_inverse(op, x, x, mu)
    with pytest.raises(ValueError, match="per-sample"):
        dc_inverse(op, x, x, torch.full((3,), 0.5))


def test_conjugate_gradient_batched():
    m = rand((6, 6), 4)
    spd = m @ m.T + 6 * torch.eye(6, dtype=D)
    scale = torch.tensor([1.0, 3.0], dtype=D).reshape(2, 1)  # a different system per sample
    b = rand((2, 6), 5)
    x = conjugate_gradient(lambda v: scale * (v @ spd), b)
    assert torch.allclose(scale * (x @ spd), b, atol=1e-10)
    zero = torch.zeros(2, 6, dtype=D)
    assert torch.equal(conjugate_gradient(lambda v: v @ spd, zero), zero)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        conjugate_gradient(lambda v: v @ spd, b, max_iter=1)


# ---------------------------------------------------------------------------------------------------
LOGDET_OPS = ["denoising", "inpainting", "deblur_gauss", "deblur_signed", "sr_blur", "cs_small"]


def tiny_op(name):
    if name == "cs_small":
        return CompressedSensing(7, (1, 4, 4), seed=1, dtype=D)
    if name == "inpainting":
        return Inpainting(random_mask((4, 4), 0.4, gen(5)))
    if name == "deblur_signed":
        return Deblurring(torch.randn(3, 3, generator=gen(6), dtype=D))
    if name == "sr_blur":
        return SuperResolution(2, gaussian_kernel(3, 0.8))
    return {"denoising": Denoising(), "deblur_gauss": Deblurring(gaussian_kernel(3, 1.0))}[name]


@pytest.mark.parametrize("name", LOGDET_OPS)
def test_block_logdet_equals_jacobian_slogdet(name):
    op = tiny_op(name)
    block = DataConsistency(op, mu_init=0.7).double()
    x = rand((1, 1, 4, 4), 7)
    y = op.A(rand((1, 1, 4, 4), 8))
    jac = torch.autograd.functional.jacobian(lambda v: block(v, y), x).reshape(16, 16)
    out, ld = block.forward_and_logdet(x, y)
    assert ld.shape == (1,)
    assert torch.allclose(out, block(x, y))
    assert float(ld.detach()) == pytest.approx(float(torch.linalg.slogdet(jac).logabsdet), abs=1e-10)
    x_back, ld_inv = block.inverse_and_logdet(out, y)
    assert torch.allclose(x_back, x, atol=1e-10) and torch.allclose(ld_inv, -ld)


def test_logdet_per_sample_and_duck():
    op = DuckOp()
    x = rand(SHAPE, 1)
    mu = torch.tensor([0.2, 0.5], dtype=D) / float(torch.linalg.matrix_norm(op.mat, ord=2) ** 2)
    eigs = torch.linalg.eigvalsh(op.mat.T @ op.mat)
    expected = torch.stack([torch.log(1 - m * eigs).sum() for m in mu])
    assert torch.allclose(dc_logdet(op, x, mu), expected, atol=1e-10)
    inp = OPS["inpainting_batched"]
    ld = dc_logdet(inp, x, mu)
    counts = inp.mask.expand(SHAPE).reshape(2, -1).sum(1)
    assert torch.allclose(ld, counts * torch.log(1 - mu), atol=1e-12)


class LogdetOf(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, y):
        return self.inner.forward_and_logdet(x, y)[1]


@pytest.mark.parametrize("name", ["deblur_gauss", "inpainting"])
def test_gradcheck_block(name):
    block = DataConsistency(tiny_op(name), mu_init=0.6).double()
    shape = (1, 1, 4, 4) if name == "deblur_gauss" else (2, 1, 4, 4)  # keep the FFT case small
    x = rand(shape, 1).requires_grad_()
    y = rand(shape, 2).requires_grad_()
    raw = torch.tensor(0.3, dtype=D, requires_grad=True)

    def out(x, y, raw):
        return functional_call(block, {"raw_mu": raw}, (x, y))

    def logdet(x, y, raw):
        return functional_call(LogdetOf(block), {"inner.raw_mu": raw}, (x, y))

    assert torch.autograd.gradcheck(out, (x, y, raw))
    assert torch.autograd.gradcheck(logdet, (x, y, raw))


def test_mu_stays_in_range():
    for op, shape in ((Denoising(), None), (SuperResolution(2, gaussian_kernel(3, 1.0)), SHAPE)):
        block = DataConsistency(op)
        L = op.norm_sq(shape)
        for raw in (-1e4, -50.0, -3.0, 0.0, 3.0, 50.0, 1e4):
            with torch.no_grad():
                block.raw_mu.fill_(raw)
            mu = float(block.step_size(shape).detach())
            assert 0 < mu < 1 / L
            x = torch.randn(SHAPE)
            y = op.A(torch.randn(SHAPE))
            assert torch.isfinite(block.inverse(block(x, y), y)).all()
    block = DataConsistency(Denoising(), mu_init=0.25)
    assert float(block.mu.detach()) == pytest.approx(0.25)
    assert isinstance(block.raw_mu, torch.nn.Parameter)
    frozen = DataConsistency(Denoising(), learn_mu=False)
    assert list(frozen.parameters()) == [] and "raw_mu" in frozen.state_dict()
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="mu_init"):
            DataConsistency(Denoising(), mu_init=bad)


def test_block_engine_contract_and_physics_swap():
    block = DataConsistency(Inpainting(box_mask((8, 8), 3)), mu_init=0.9).double()
    check_block(block)
    assert "physics" not in dict(block.named_children())
    x, y = rand(SHAPE, 1), rand(SHAPE, 2).requires_grad_()
    out = block(x, y)
    xr, out_graph, ld = rebuild(block, out.detach(), y, logdet=True)
    assert torch.allclose(xr, x, atol=1e-12) and ld.shape == (2,)
    out_graph.sum().backward()
    assert y.grad is not None and block.raw_mu.grad is not None
    block.physics = DuckOp()  # a foreign operator: CG inverse, power-iteration norm
    yd = block.physics.A(rand(SHAPE, 3))
    xd, _ = inverse_logdet(block, block(x, yd), yd)
    assert torch.allclose(xd, x, atol=1e-8)
    block.physics = Deblurring(gaussian_kernel(3, 1.0))
    assert torch.allclose(block.inverse(block(x, x), x), x, atol=1e-12)
    with pytest.raises(TypeError, match="A_adjoint"):
        block.physics = "not an operator"


def test_noise_and_measure():
    op = Inpainting(box_mask((1, 1, 8, 8), (2, 4), top_left=(0, 0)))
    x = rand(SHAPE)
    y1 = op.measure(x, 0.1, gen(4))
    y2 = op.measure(x, 0.1, gen(4))
    assert torch.equal(y1, y2) and not torch.equal(y1, op.A(x))
    assert torch.equal(op.measure(x, 0.0), op.A(x))
    per = op.noise(torch.zeros(SHAPE, dtype=D), torch.tensor([0.0, 1.0], dtype=D), gen(5))
    assert float(per[0].abs().max()) == 0.0 and float(per[1].std()) > 0.5
    with pytest.raises(ValueError, match="sigma"):
        op.noise(x, -1.0)


def test_dtype_and_device_follow_input():
    op = make_physics("deblurring", (3, 8, 8))  # float32 kernel
    assert op.A(rand(SHAPE)).dtype == D
    assert op.A(torch.randn(SHAPE)).dtype == torch.float32
    assert make_physics("compressed_sensing", SHAPE, seed=0).A(rand(SHAPE)).dtype == D


def test_masks_and_kernels():
    m = random_mask((2, 1, 16, 16), 0.5, gen(0))
    assert torch.equal(m, random_mask((2, 1, 16, 16), 0.5, gen(0)))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    b = box_mask((8, 8), 4)
    assert float(b.sum()) == 48 and float(b[2:6, 2:6].sum()) == 0
    assert torch.equal(box_mask((8, 8), 2, generator=gen(1)), box_mask((8, 8), 2, generator=gen(1)))
    for k in (gaussian_kernel(7, 1.5), motion_kernel(9, 45.0), motion_kernel(7, 0.0, length=3)):
        assert float(k.sum()) == pytest.approx(1.0, abs=1e-6) and (k >= 0).all()
    assert torch.allclose(gaussian_kernel(5, 1.0), gaussian_kernel(5, 1.0).flip(0).flip(1))
    assert torch.equal(motion_kernel(9, 30.0), motion_kernel(9, 30.0))
    assert float(motion_kernel(5, 0.0)[2].sum()) == pytest.approx(1.0)


def test_errors():
    with pytest.raises(ValueError, match="0 \\(missing\\) or 1"):
        Inpainting(torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="shape"):
        Inpainting(torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="no pixel"):
        Inpainting(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="mask"):
        Inpainting([[1, 0]])
    with pytest.raises(ValueError, match="does not match"):
        Inpainting(torch.ones(5, 5)).A(torch.ones(SHAPE))
    with pytest.raises(ValueError, match="larger than the image"):
        Deblurring(gaussian_kernel(9, 1.0)).A(torch.ones(SHAPE))
    with pytest.raises(ValueError, match="larger than the image"):
        Deblurring(gaussian_kernel(9, 1.0), img_size=(8, 8))
    with pytest.raises(ValueError, match="all zero"):
        Deblurring(torch.zeros(3, 3))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="factor"):
            SuperResolution(bad)
    with pytest.raises(ValueError, match="divisible"):
        SuperResolution(3).A(torch.ones(SHAPE))
    with pytest.raises(ValueError, match="p_missing"):
        random_mask((4, 4), 1.0)
    with pytest.raises(ValueError, match="box"):
        box_mask((4, 4), 5)
    with pytest.raises(ValueError, match="\\(B, 3, 8, 8\\)"):
        CompressedSensing(5, (3, 8, 8)).A(torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="m "):
        CompressedSensing(0, (3, 8, 8))
    with pytest.raises(ValueError, match="valid tasks are: denoising, inpainting"):
        make_physics("deconvolution", (3, 8, 8))


@pytest.mark.parametrize("task", TASKS)
def test_make_physics(task):
    op = (
        make_physics(task, (3, 8, 8), seed=0)
        if task in ("inpainting", "compressed_sensing")
        else make_physics(task, (3, 8, 8))
    )
    assert isinstance(op, LinearOperator)
    assert op.adjointness_error(SHAPE, gen(0)) < 1e-10
    x = rand(SHAPE)
    y = op.A(rand(SHAPE, 1))
    block = DataConsistency(op, mu_init=0.9).double()
    assert torch.allclose(block.inverse(block(x, y), y), x, atol=1e-8)
    assert block.forward_and_logdet(x, y)[1].shape == (2,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_with_cpu_buffers():
    x = torch.randn(SHAPE, device="cuda", dtype=D)
    for name, op in make_ops().items():
        y = op.A(torch.randn(SHAPE, device="cuda", dtype=D))
        mu = 0.5 / op.norm_sq(SHAPE)
        xt = dc_step(op, x, y, mu)
        assert xt.device.type == "cuda", name
        assert torch.allclose(dc_inverse(op, xt, y, mu), x, atol=1e-8), name
        assert dc_logdet(op, x, mu).device.type == "cuda" if name not in PER_SAMPLE_OPS else True

