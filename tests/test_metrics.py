"""PSNR and SSIM against scikit-image."""

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from invprox.metrics import mse, psnr, ssim


def _pair(channels, dtype=torch.float64, b=3, h=48, w=40):
    """Real image crops (astronaut) and noisy, slightly blurred versions of them."""
    img = torch.from_numpy(skdata.astronaut()[100 : 100 + h * b, 200 : 200 + w].copy())
    img = img.to(torch.float64).div(255).permute(2, 0, 1)
    if channels == 1:
        img = img.mean(0, keepdim=True)
    ref = torch.stack(img.split(h, dim=1))  # (b, C, h, w)
    g = torch.Generator().manual_seed(0)
    noisy = ref + 0.05 * torch.arange(1, b + 1).view(-1, 1, 1, 1) * torch.randn(
        ref.shape, generator=g, dtype=ref.dtype
    )
    noisy = 0.5 * noisy + 0.25 * (noisy.roll(1, -1) + noisy.roll(-1, -2))
    return noisy.to(dtype), ref.to(dtype)


def _sk_ssim(x, ref):
    out = []
    for a, r in zip(x.double().numpy(), ref.double().numpy()):
        kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        if a.shape[0] == 1:
            out.append(structural_similarity(r[0], a[0], **kw))
        else:
            out.append(structural_similarity(r, a, channel_axis=0, **kw))
    return np.array(out)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-7), (torch.float32, 1e-4)])
def test_against_skimage(channels, dtype, tol):
    x, ref = _pair(channels, dtype)
    p = psnr(x, ref)
    s = ssim(x, ref)
    assert p.shape == (3,) and s.shape == (3,)
    sk_p = [
        peak_signal_noise_ratio(r, a, data_range=1.0)
        for a, r in zip(x.double().numpy(), ref.double().numpy())
    ]
    np.testing.assert_allclose(p.double().numpy(), sk_p, atol=tol * 100, rtol=tol)
    np.testing.assert_allclose(s.double().numpy(), _sk_ssim(x, ref), atol=tol, rtol=0)
    assert (s[:-1] > s[1:]).all()  # more noise, lower SSIM


def test_data_range_and_identity():
    x, ref = _pair(3)
    assert torch.allclose(psnr(255 * x, 255 * ref, data_range=255.0), psnr(x, ref))
    assert torch.allclose(ssim(255 * x, 255 * ref, data_range=255.0), ssim(x, ref))
    assert torch.isinf(psnr(ref, ref)).all()
    assert torch.allclose(ssim(ref, ref), torch.ones(3, dtype=ref.dtype))
    assert torch.allclose(mse(x, ref), (x - ref).pow(2).mean((1, 2, 3)))


def test_gradients_flow():
    x, ref = _pair(1, torch.float32, b=2, h=16, w=16)
    x.requires_grad_(True)
    (ssim(x, ref).sum() + psnr(x, ref).sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_errors():
    a = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, torch.rand(2, 1, 16, 15))
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)|at least 4"):
        ssim(torch.rand(16, 16), torch.rand(16, 16))
    with pytest.raises(TypeError):
        psnr(a.numpy(), a)
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, a, data_range=0)
