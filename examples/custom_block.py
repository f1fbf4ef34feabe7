"""Check your own invertible block with ``invprox.testing`` before you put it in a chain.

What it shows: two home-made blocks and the three checks that :mod:`invprox.testing` ships for users:

* :class:`ConditionalScaleShift`: ``y = x * exp(s(c)) + t(c)``, scale and shift computed by a small network
  from a conditioning tensor ``c`` (a noise-level map, a measurement), passed as the chain's ``cond``;
* :class:`LeakyReLUFlow`: the invertible element-wise ``y = x if x > 0 else a * x``, a block without
  parameters whose log-determinant counts the negative entries.

and, to show what a failure looks like, :class:`BrokenScaleShift`, whose log-determinant forgets a
factor. The checks, run in float64 on tiny inputs:

1. ``check_roundtrip(block, x, *cond)``: ``inverse(forward(x)) == x`` and back;
2. ``check_logdet(block, x, *cond)``: ``forward_and_logdet`` and the inverse's against ``slogdet`` of
   the brute-force Jacobian;
3. ``check_chain_gradients(blocks, x, *cond)``: gradients for ``x``, ``cond`` and every parameter
   through the engine equal standard autograd's (``keep_every`` and the other chain options can be
   passed).

Run::

    python examples/custom_block.py             # about a second
    python examples/custom_block.py --tiny      # the same (it is already tiny)

Prints each check with its measured error (PASS/FAIL) and writes ``checks.json`` to
``runs/examples/custom_block`` (``--out``). Exit status 0: the good blocks pass and the broken one is caught.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import invprox
from invprox import testing
from invprox.flows import AffineCoupling


class ConditionalScaleShift(invprox.InvertibleModule):
    """``y = x * exp(s) + t`` with ``(s, t) = net(c)``: element-wise affine, conditioned on ``c``.

    Args:
        channels: channels of ``x``.
        cond_channels: channels of ``c``.
        hidden: hidden channels of the network.

    Shapes: ``x`` ``(B, channels, H, W)``, ``c`` ``(B, cond_channels, H, W)``; log-determinant ``(B,)``.
    """

    uses_cond = True  # declared: the engine passes the chain's cond tensors only to blocks that say so

    def __init__(self, channels: int, cond_channels: int, hidden: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.Tanh(),
                                 nn.Conv2d(hidden, 2 * channels, 3, padding=1))

    def _params(self, c: Tensor):
        s, t = self.net(c).chunk(2, dim=1)
        return torch.tanh(s), t  # bounded log-scale: the inverse stays well conditioned

    def forward_and_logdet(self, x: Tensor, c: Tensor):
        s, t = self._params(c)
        return x * torch.exp(s) + t, s.flatten(1).sum(1)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.forward_and_logdet(x, c)[0]

    def inverse(self, y: Tensor, c: Tensor) -> Tensor:
        s, t = self._params(c)
        return (y - t) * torch.exp(-s)


class LeakyReLUFlow(invprox.InvertibleModule):
    """``y = x`` where ``x > 0``, ``a * x`` elsewhere; ``log|det| = (number of x <= 0) * log a``."""

    def __init__(self, slope: float = 0.5):
        super().__init__()
        if not 0 < slope:
            raise ValueError(f"slope must be positive, got {slope!r}")
        self.slope = slope

    def forward_and_logdet(self, x: Tensor):
        neg = (x <= 0).flatten(1).sum(1).to(x.dtype)
        return F.leaky_relu(x, self.slope), neg * torch.log(x.new_tensor(self.slope))

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.slope)

    def inverse(self, y: Tensor) -> Tensor:
        return F.leaky_relu(y, 1.0 / self.slope)


class BrokenScaleShift(ConditionalScaleShift):
    """A deliberate bug: the log-determinant is off by a factor 2 (what a failing check looks like)."""

    def forward_and_logdet(self, x: Tensor, c: Tensor):
        y, ld = super().forward_and_logdet(x, c)
        return y, 2 * ld


def run_check(name: str, fn: Callable[[], float], expect_fail: bool = False) -> Dict[str, object]:
    """Run one check; it raises AssertionError (with a message) when the block fails it."""
    try:
        err, ok, msg = fn(), True, ""
    except AssertionError as e:
        err, ok, msg = None, False, str(e)
    status = "PASS" if ok else "FAIL"
    note = " (expected: the broken block is caught)" if expect_fail and not ok else ""
    print(f"  {status}  {name:<70s} {'' if err is None else f'error {err:.2e}'}{msg}{note}")
    return {"check": name, "passed": ok, "error": err, "message": msg, "expected_to_fail": expect_fail}


def main(argv=None) -> List[Dict[str, object]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="accepted for uniformity: the run is already tiny")
    p.add_argument("--out", default="runs/examples/custom_block", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    # tiny float64 inputs: the log-determinant check builds the dense Jacobian (here 2*3*3 = 18 entries)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    c = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    good = ConditionalScaleShift(2, 1).double()
    leaky = LeakyReLUFlow(0.5)
    broken = BrokenScaleShift(2, 1).double()
    # zero-initialised layers hide bugs; give a library coupling random weights before checking it
    coupling = testing.randomize_parameters(AffineCoupling(2, hidden=4).double(), std=0.3, seed=args.seed)
    invprox.core.check_block(good)  # the contract: an nn.Module with forward and inverse

    print("invprox.testing checks (float64):")
    results = [
        run_check("ConditionalScaleShift: round trip", lambda: testing.check_roundtrip(good, x, c)),
        run_check("ConditionalScaleShift: log-determinant", lambda: testing.check_logdet(good, x, c)),
        run_check("LeakyReLUFlow: round trip", lambda: testing.check_roundtrip(leaky, x)),
        run_check("LeakyReLUFlow: log-determinant", lambda: testing.check_logdet(leaky, x)),
        # in a chain with a library block, a block used twice, and Inverse: gradients vs standard autograd
        run_check("chain [shift, leaky, coupling, Inverse(shift), leaky]: gradients",
                  lambda: testing.check_chain_gradients(
                      [good, leaky, coupling, invprox.Inverse(good), leaky], x, c)[0]),
        run_check("same chain, keep_every=2 (drift policy): gradients",
                  lambda: testing.check_chain_gradients(
                      [good, leaky, coupling, invprox.Inverse(good), leaky], x, c, keep_every=2)[0]),
        run_check("BrokenScaleShift: log-determinant", lambda: testing.check_logdet(broken, x, c),
                  expect_fail=True),
    ]
    (out / "checks.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'checks.json'}")
    if any(r["passed"] == r["expected_to_fail"] for r in results):
        raise SystemExit("an unexpected check result (see above)")
    return results


if __name__ == "__main__":
    main()
