"""Plumbing shared by the face examples (not an example itself).

* :func:`face_parser` / :func:`setup`: the common command-line options (``--tiny``, ``--out``, ``--data``,
  ``--flow``, ``--steps``, ...) with separate defaults for a real run and for ``--tiny``.
* :func:`load_faces`: CelebA faces at 32x32 from ``../shared/data/celeba64``, or the embedded
  scikit-image pictures (with a message) where the folder is missing.
* :func:`load_glow`: the pre-trained Glow (``benchmarks/results/glow_celeba32.pt``), loaded once per
  process and copied for every caller.
* :func:`fine_tune`: the end-to-end training loop of an unrolled solver (MSE to the clean image).
* :func:`solve_face_task`: a task example's whole run once it has its operator: the flow prox calibrated,
  fine-tuned and compared with the classical reference.
* :func:`reconstruct`, :func:`report`, :func:`compare_with_classical`, :func:`learned_steps`: evaluation,
  PSNR per method, a labelled image grid and ``metrics.json``.

A caveat the loop handles: the inverse ``g`` of the pre-trained Glow overflows (NaN, in float64 too) on
some latents far from its training data, e.g. ``g(z / (1 + lambda))`` of noisy faces at sigma >= 0.1, or
``glow.sample(n, temperature=1.0)``. :func:`fine_tune` skips a step whose loss or gradient is not finite
(the library's one policy, ``NonFiniteSteps``: it gives up after 10 in a row); :func:`report` counts NaN
images and scores them as black.

The scripts import it as ``from _common import ...``: Python puts the script's folder on ``sys.path``
when it runs ``python examples/<name>.py``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from invprox.data import make_dataset
from invprox.flows import Glow
from invprox.metrics import psnr
from invprox.train.loop_utils import NonFiniteSteps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FLOW = REPO / "benchmarks" / "results" / "glow_celeba32.pt"
SIZE = 32  # the pre-trained Glow models 3 x 32 x 32 faces

#: a measurement function: (clean images, generator) -> (measurement, operator)
Measure = Callable[[Tensor, torch.Generator], Tuple[Tensor, nn.Module]]


def face_parser(doc: str, name: str, real: Dict[str, Any], tiny: Dict[str, Any]) -> argparse.ArgumentParser:
    """The options every face example takes.

    Every key of ``real`` (``steps``, ``batch``, ``K``, ``n_val``, ``sigma``, ...) becomes an option
    ``--key`` typed by its value; :func:`setup` fills in ``real``'s value, or ``tiny``'s with ``--tiny``,
    where the command line gave none.
    """
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a seconds-long run (smoke test)")
    p.add_argument("--out", default=f"runs/examples/{name}", help="output folder (default: %(default)s)")
    p.add_argument("--data", default="celeba64",
                   help="shared data set name or image folder with train/ and val/ (default: %(default)s)")
    p.add_argument("--flow", default=str(DEFAULT_FLOW), help="the pre-trained Glow (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is often fastest on a busy machine)")
    for key, value in real.items():  # steps, batch, K, n_val, sigma, ...: typed by their real default
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=type(value), default=None,
                       help=f"default {value}" + (f" ({tiny[key]} with --tiny)" if key in tiny else ""))
    p.set_defaults(_real=real, _tiny=tiny)
    return p


def setup(args: argparse.Namespace) -> Path:
    """Fill in the defaults (real or tiny), seed, set threads, create ``args.out``; return it."""
    defaults = {**args._real, **(args._tiny if args.tiny else {})}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_faces(spec: str, split: str, n: int, seed: int = 0) -> Tensor:
    """``n`` images ``(n, 3, 32, 32)`` in ``[0, 1]`` of ``split``, a seeded random subset.

    ``spec`` is a shared data set (``"celeba64"``) or a folder; when it cannot be found the embedded
    scikit-image pictures are used instead, with a message (they are not faces: the face prior fits
    them less well).
    """
    try:
        ds = make_dataset(spec, size=SIZE, channels=3, split=split)
    except FileNotFoundError as err:
        print(f"[data] {spec!r} not found ({str(err).splitlines()[0]}); "
              f"falling back to the embedded scikit-image pictures ({split}), which are not faces")
        ds = make_dataset("embedded", size=SIZE, channels=3, split=split, n=max(int(n), 1), seed=seed)
    g = torch.Generator().manual_seed(seed * 2 + (split == "val"))
    idx = torch.randperm(len(ds), generator=g)[:n]
    return torch.stack([ds[int(i)] for i in idx])


@functools.lru_cache(maxsize=2)
def _load_glow(path: str) -> Glow:
    return Glow.load(path)


def load_glow(path: str) -> Glow:
    """A private copy of the Glow saved at ``path`` (read from disk once per process), 3 x 32 x 32."""
    glow = copy.deepcopy(_load_glow(str(path)))
    if glow.in_channels != 3 or tuple(glow.image_size) != (SIZE, SIZE):
        raise ValueError(f"{path} models {glow.in_channels}x{tuple(glow.image_size)} images; "
                         f"these examples need a 3x{SIZE}x{SIZE} Glow")
    return glow


def face_task(doc: str, name: str, real: Dict[str, Any], tiny: Dict[str, Any], argv=None):
    """What every face example starts with: ``(args, out folder, Glow prior, training faces, val faces)``."""
    args = face_parser(doc, name, real, tiny).parse_args(argv)
    out = setup(args)
    glow = load_glow(args.flow)
    x_train = load_faces(args.data, "train", args.n_train, args.seed)
    x_val = load_faces(args.data, "val", args.n_val, args.seed)
    return args, out, glow, x_train, x_val


def calibrate(solver: nn.Module, x_train: Tensor, measure: Measure, n: int = 16, seed: int = 0) -> dict:
    """Set the solver's start, ``mu_k`` and ``lambda_k`` from ``n`` training pairs, without backprop.

    (:meth:`invprox.solvers.FlowProxSolver.calibrate`: the untrained solver is then a denoiser.)
    """
    g = torch.Generator().manual_seed(seed + 2)
    x = x_train[torch.randperm(len(x_train), generator=g)[:n]]
    y, op = measure(x, g)
    report = solver.calibrate(y, x, op)
    print(f"calibrated on {len(x)} training pairs: start {report['start_psnr']:.2f} dB, "
          f"after {solver.K} folds {report['psnr']:.2f} dB")
    return report


def fine_tune(solver: nn.Module, x_train: Tensor, measure: Measure, steps: int, batch: int,
              lr_net: float, lr_step: float, seed: int = 0, log_every: int = 5) -> list:
    """Train ``solver`` end to end: MSE between ``solver(y, physics=op)`` and the clean batch.

    Every step draws ``batch`` training images and a fresh measurement ``(y, op) = measure(x, g)``.
    The flows get ``lr_net``, the step sizes ``mu_k`` and shrinkages ``lambda_k`` get ``lr_step``
    (``FlowProxSolver.param_groups``). Returns the training losses.
    """
    opt = torch.optim.Adam(solver.param_groups(lr_net=lr_net, lr_step=lr_step))
    g = torch.Generator().manual_seed(seed + 1)
    losses = []
    nonfinite = NonFiniteSteps(10)  # the library's one policy: skip up to 10 in a row, then stop
    solver.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x = x_train[torch.randint(len(x_train), (batch,), generator=g)]
        y, op = measure(x, g)
        loss = F.mse_loss(solver(y, physics=op), x)
        opt.zero_grad(set_to_none=True)
        bad = NonFiniteSteps.check(float(loss.detach()))
        if bad is None:
            loss.backward()  # the engine's backward: activation memory one block deep, whatever K
            norm = float(nn.utils.clip_grad_norm_(solver.parameters(), 1.0))
            bad = NonFiniteSteps.check(float(loss.detach()), norm)
        if bad is not None:  # a Glow's inverse can overflow off its data
            opt.zero_grad(set_to_none=True)
            print(f"  step {step:4d}: {bad}, step skipped")
            if not nonfinite.skip(step, bad):
                raise FloatingPointError(f"{bad}: more than {nonfinite.limit} non-finite steps in a row; "
                                         "lower --lr-net, --mu-init or --lam-init")
            continue
        nonfinite.good()
        opt.step()
        losses.append(loss.item())
        if step == 1 or step % log_every == 0 or step == steps:
            print(f"  step {step:4d}/{steps}  loss {losses[-1]:.5f}  "
                  f"({-10 * torch.log10(loss.detach()).item():.2f} dB)  {time.perf_counter() - t0:.1f} s")
    solver.eval()
    return losses


@torch.no_grad()
def reconstruct(solver: nn.Module, y: Tensor, physics: Optional[nn.Module] = None, batch: int = 16) -> Tensor:
    """``solver(y)`` in evaluation mode, in chunks of ``batch``, clamped to ``[0, 1]``."""
    was = solver.training
    solver.eval()
    out = torch.cat([solver(y[i : i + batch], physics) for i in range(0, len(y), batch)])
    solver.train(was)
    return out.clamp(0, 1)


def report(out: Path, clean: Tensor, rows: Dict[str, Tensor], title: str,
           extra: Optional[Dict[str, Any]] = None, show: Sequence[str] = ()) -> Dict[str, float]:
    """Print the mean PSNR of every row against ``clean``, write ``grid.png`` and ``metrics.json``.

    Args:
        out: the output folder.
        clean: ground truth ``(N, C, H, W)``.
        rows: method name -> images ``(N, C, H, W)`` (clamped to ``[0, 1]``; NaN pixels set to 0).
        title: the grid's title.
        extra: more values for ``metrics.json``.
        show: rows drawn in the grid but not scored (e.g. the measurement itself).
    """
    from invprox.train.images import save_grid  # matplotlib, imported only here

    scores = {}
    print(f"PSNR on {len(clean)} validation images (dB, mean):")
    for name, x in rows.items():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        rows[name] = x = torch.nan_to_num(x, nan=0.0).clamp(0, 1)  # NaN pixels count as black
        if name in show:
            continue
        scores[name] = float(psnr(x, clean).mean())
        print(f"  {name:<28s} {scores[name]:6.2f}" + (f"  ({bad} images with NaN/Inf pixels)" if bad else ""))
    grid = save_grid({**rows, "clean": clean}, out / "grid.png", nrow=8, title=title)
    (out / "metrics.json").write_text(json.dumps({"psnr": scores, **(extra or {})}, indent=2) + "\n")
    print(f"wrote {grid} and {out / 'metrics.json'}")
    return scores


def learned_steps(solver: nn.Module) -> Dict[str, list]:
    """The learned ``mu_k`` (fractions of ``1 / ||A||^2``) and ``lambda_k`` (one per latent level) of a
    FlowProxSolver."""
    return {"mu_fraction": [round(dc.fraction().item(), 4) for dc in solver.dc],
            "lambda": [[round(v, 4) for v in s.lam.reshape(-1).tolist()] for s in solver.shrink]}


def compare_with_classical(
    out: Path, task: str, solver: nn.Module, x_val: Tensor, y_val: Tensor, op: nn.Module, sigma: float,
    before: Tensor, extra: Dict[str, Any],
) -> Dict[str, float]:
    """Score A^T y, the classical reference, the solver calibrated (untrained) and fine-tuned."""
    from invprox.solvers import classical_reference

    after = reconstruct(solver, y_val, op)
    ref, method = classical_reference(y_val, op, task, sigma)  # TV, biharmonic, BM3D: see its docstring
    steps = learned_steps(solver)
    print(f"learned mu_k (fraction of 1/||A||^2) {steps['mu_fraction']}, lambda_k {steps['lambda']}")
    print(f"classical reference: {method}")
    rows = {"A^T y": op.A_adjoint(y_val), method: ref, "flow prox, calibrated": before,
            "flow prox, fine-tuned": after}
    return report(out, x_val, rows, title=f"{task}, sigma={sigma}, K={solver.K}",
                  extra={"task": task, "sigma": sigma, "classical": method, **steps, **extra})


def solve_face_task(args: argparse.Namespace, out: Path, glow: Glow, x_train: Tensor, x_val: Tensor,
                    task: str, measure: Measure, extra: Dict[str, Any]) -> Dict[str, float]:
    """The flow prox on one task: built on the validation measurement's operator, calibrated on training
    pairs from ``measure(x, generator) -> (y, physics)``, fine-tuned, and compared with the classical
    reference (:func:`compare_with_classical`)."""
    from invprox.solvers import FlowProxSolver

    y_val, op_val = measure(x_val, torch.Generator().manual_seed(args.seed + 100))
    solver = FlowProxSolver(glow, op_val, K=args.K, mu_init=args.mu_init, lam_init=args.lam_init)
    calibrate(solver, x_train, measure, seed=args.seed)
    before = reconstruct(solver, y_val, op_val)
    fine_tune(solver, x_train, measure, args.steps, args.batch, args.lr_net, args.lr_step, args.seed)
    return compare_with_classical(out, task, solver, x_val, y_val, op_val, args.sigma, before,
                                  extra={"K": args.K, "steps": args.steps, **extra})
