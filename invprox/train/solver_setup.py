"""What training and evaluation of unrolled solvers share: task physics, seeded measurements, solver files.

* :func:`physics_options` / :func:`task_physics`: a task name and its options (``p_missing``, ``kernel``,
  ``blur_std``, ``factor``, ``cs_ratio``) to an operator. Inpainting is the one random task: every training
  batch gets a new mask; the compressed-sensing matrix is fixed by the seed (it is part of the problem).
* :func:`fixed_measurements`: the measurement of image ``i`` at noise ``sigma`` is a pure function of
  ``(seed, stream, i, sigma)``, whatever the batch size or order (validation and evaluation).
* :func:`build_solver`, :func:`save_solver`, :func:`load_solver`: a ``solver.pt`` holds the training
  config, the solver's state dict and, for flow solvers, the Glow config, so it rebuilds without the
  pre-trained flow file.
* :func:`load_source`: the trained solver a run grows from (``--init-from``, :mod:`invprox.solvers.grow`).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..physics import canonical_task, make_physics

__all__ = [
    "PROX_KINDS",
    "RANDOM_TASKS",
    "SOLVER_FORMAT",
    "mix_seed",
    "mirrored",
    "physics_options",
    "task_physics",
    "fixed_measurements",
    "load_model_state",
    "load_flow",
    "build_solver",
    "save_solver",
    "load_solver",
    "load_source",
    "run_flow",
]

PROX_KINDS = ("flow", "resnet", "unet")
RANDOM_TASKS = ("inpainting",)
SOLVER_FORMAT = "invprox.solver/1"
_STREAMS = {"train": 1, "val": 2, "eval": 3, "mask": 4, "flip": 5}


def _maps(value: Any) -> int:
    return int(value or 0)


#: options of the flow prox that shape its solver (its state dict), each with the normaliser of a config
#: value (``None`` where a config predates the option): ``build_solver`` passes them to ``FlowProxSolver``
#: and a run grown with ``--init-from`` must match its source in each
FLOW_ARCH = {"cond_y": bool, "lam_y": bool, "cond_net": _maps, "untie_inverse": bool}
#: options of the flow prox alone and their defaults (refused for a CNN prox when set otherwise)
FLOW_ONLY = {**{key: norm(None) for key, norm in FLOW_ARCH.items()}, "widen": None, "level_steps": None,
             "lr_split": None, "lr_coupling": None, "keep_mu": False, "anchor": 0.0, "freeze_levels": None}


def check_config(cfg: Dict[str, Any], budget_clock: str = "cpu") -> None:
    """Refuse a training config that cannot run, with the option named (``train_solver``'s checks).

    Raises:
        ValueError: what is wrong.
    """
    from .loop_utils import SCHEDULES

    if cfg["prox"] not in PROX_KINDS:
        raise ValueError(f"prox must be one of {PROX_KINDS}, got {cfg['prox']!r}")
    for name in ("K", "batch", "epochs", "size"):
        if isinstance(cfg[name], bool) or not isinstance(cfg[name], int) or cfg[name] < 1:
            raise ValueError(f"{name} must be a positive int, got {cfg[name]!r}")
    if cfg["lr_schedule"] not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {cfg['lr_schedule']!r}")
    if not isinstance(cfg["warmup"], int) or cfg["warmup"] < 0:
        raise ValueError(f"warmup must be a non-negative int (steps), got {cfg['warmup']!r}")
    for key, default in FLOW_ONLY.items():
        value = FLOW_ARCH[key](cfg.get(key)) if key in FLOW_ARCH else cfg.get(key, default)
        if value != default and cfg["prox"] != "flow":
            raise ValueError(f"{key} is an option of the flow prox, not of prox {cfg['prox']!r}")
    cn = cfg.get("cond_net")
    if cn is not None and (isinstance(cn, bool) or not isinstance(cn, int) or cn < 1):
        raise ValueError(f"cond_net must be a positive int (feature maps), got {cn!r}")
    if cfg.get("keep_mu") and not cfg["calibrate"]:
        raise ValueError("keep_mu keeps the flow prox's calibration off mu_k: it needs --calibrate N > 0")
    for key, what in (("widen", "widens"), ("level_steps", "drops flow steps of")):
        if cfg.get(key) is not None and cfg.get("init_from"):
            raise ValueError(f"{key} {what} the pre-trained Glow of --flow PATH; a run grown with "
                             f"--init-from keeps its source's Glow")
    if not cfg.get("anchor", 0.0) >= 0:
        raise ValueError(f"anchor must be a non-negative weight, got {cfg.get('anchor')!r}")
    if not cfg.get("adam_eps", 1e-8) > 0:
        raise ValueError(f"adam_eps must be a positive number, got {cfg.get('adam_eps')!r}")
    if budget_clock not in ("cpu", "wall"):
        raise ValueError(f"budget_clock must be 'cpu' or 'wall', got {budget_clock!r}")
    if not cfg["sigma"] >= 0:
        raise ValueError(f"sigma must be non-negative, got {cfg['sigma']!r}")


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (independent streams for different tuples)."""
    words = [int(p) & 0xFFFFFFFF for p in parts] + [(int(p) >> 32) & 0xFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) >> 1


def mirrored(x: Tensor, seed: int, step: int) -> Tensor:
    """Training batch ``x`` (``(B, C, H, W)``) with each image flipped left-right with probability 1/2;
    which ones is a pure function of ``(seed, step)`` (``invprox train --flip``)."""
    if x.dim() != 4:
        raise ValueError(f"mirrored expects a batch of shape (B, C, H, W), got {tuple(x.shape)}")
    g = torch.Generator().manual_seed(mix_seed(seed, _STREAMS["flip"], step))
    pick = (torch.rand(x.shape[0], generator=g) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(pick, x.flip(-1), x)


def _sigma_key(sigma: float) -> int:
    return int(round(float(sigma) * 1e6))


def physics_options(
    task: str, p_missing: float = 0.5, kernel: str = "gaussian", blur_std: float = 2.0,
    factor: int = 2, cs_ratio: float = 0.25, seed: int = 0,
) -> Dict[str, Any]:
    """The :func:`invprox.physics.make_physics` options of ``task`` (only those it takes).

    Raises:
        ValueError: unknown task, or ``kernel`` not ``"gaussian"``/``"motion"``.
    """
    task = canonical_task(task)
    if task == "inpainting":
        return {"p_missing": float(p_missing)}
    if task == "deblurring":
        if kernel not in ("gaussian", "motion"):
            raise ValueError(f"kernel must be 'gaussian' or 'motion', got {kernel!r}")
        return {"blur": kernel, "std": float(blur_std)} if kernel == "gaussian" else {"blur": kernel}
    if task == "superresolution":
        return {"factor": int(factor)}
    if task == "compressed_sensing":
        return {"ratio": float(cs_ratio), "seed": mix_seed(seed, 7)}
    return {}


def task_physics(
    task: str, shape: Sequence[int], options: Dict[str, Any], generator: Optional[torch.Generator] = None
) -> nn.Module:
    """The operator of ``task`` for images ``shape`` ``(C, H, W)``; ``generator`` draws a random mask."""
    task = canonical_task(task)
    kw = dict(options)
    if task in RANDOM_TASKS and generator is not None:
        kw["generator"] = generator
    return make_physics(task, tuple(shape), **kw)


def fixed_measurements(
    x: Tensor, indices: Sequence[int], task: str, options: Dict[str, Any], sigma: float, seed: int,
    stream: str = "val", batch: int = 16, physics: Optional[nn.Module] = None,
) -> List[Tuple[int, int, Tensor, nn.Module]]:
    """Deterministic measurements of images ``x`` ``(N, C, H, W)`` whose data-set indices are ``indices``.

    The noise of image ``i`` is drawn from a generator seeded with ``(seed, stream, i, sigma)``; for a
    random task its mask from ``(seed, i)`` alone (the same mask at every ``sigma``), and each such image
    is its own group.

    Returns:
        Groups ``(start, end, y, physics)``: ``y`` measures ``x[start:end]`` through ``physics``.
    """
    task = canonical_task(task)
    shape = tuple(x.shape[1:])
    random_task = task in RANDOM_TASKS
    if physics is None and not random_task:
        physics = task_physics(task, shape, options)
    step = 1 if random_task else max(1, int(batch))
    groups = []
    for start in range(0, len(x), step):
        end = min(start + step, len(x))
        op = physics
        if random_task:
            gm = torch.Generator().manual_seed(mix_seed(seed, _STREAMS["mask"], int(indices[start])))
            op = task_physics(task, shape, options, gm)
        ys = []
        for j in range(start, end):
            g = torch.Generator().manual_seed(
                mix_seed(seed, _STREAMS[stream], int(indices[j]), _sigma_key(sigma)))
            ys.append(op.measure(x[j : j + 1], float(sigma), g))
        groups.append((start, end, torch.cat(ys), op))
    return groups


def load_model_state(solver: nn.Module, state: Dict[str, Tensor]) -> None:
    """Load a solver's state dict, with a readable error when it belongs to another solver.

    Raises:
        ValueError: missing or unexpected keys.
    """
    res = solver.load_state_dict(state, strict=False)
    if res.missing_keys or res.unexpected_keys:
        raise ValueError(f"the saved state does not fit this solver: missing {res.missing_keys[:5]}, "
                         f"unexpected {res.unexpected_keys[:5]}")


def load_flow(path: Optional[str], size: int, channels: int) -> nn.Module:
    """Load a pre-trained Glow (``flow.pt`` of ``invprox pretrain``) and check it fits the images.

    Raises:
        ValueError: no path, or a flow of another image shape. FileNotFoundError: no such file.
    """
    from ..flows.glow import Glow

    if not path:
        raise ValueError("--prox flow needs a pre-trained Glow: pass --flow PATH "
                         "(the flow.pt written by `invprox pretrain`)")
    flow = Glow.load(path)
    if flow.in_channels != channels or tuple(flow.image_size) != (size, size):
        h, w = flow.image_size
        raise ValueError(f"the flow {path} models {flow.in_channels}x{h}x{w} images, but the data is "
                         f"{channels}x{size}x{size}: use --size/--channels to match")
    return flow


def build_solver(config: Dict[str, Any], physics: nn.Module, flow: Optional[nn.Module] = None) -> nn.Module:
    """A fresh solver from a training config (``prox``, ``K``, ``channels``, ``size`` and the prox options).

    Raises:
        ValueError: unknown ``prox``, or ``prox="flow"`` without a flow.
    """
    kind = config["prox"]
    if kind not in PROX_KINDS:
        raise ValueError(f"prox must be one of {PROX_KINDS}, got {kind!r}")
    if kind == "flow":
        if flow is None:
            raise ValueError("--prox flow needs a pre-trained Glow: pass --flow PATH "
                             "(the flow.pt written by `invprox pretrain`)")
        kw: Dict[str, Any] = {"tied": bool(config.get("tied")), "shrinkage": config.get("shrinkage"),
                              "keep_every": config.get("keep_every", "fold"),
                              "lam_init": config.get("lam_init", 0.1),
                              "lam_per": config.get("lam_per", "scalar"),
                              "memory_efficient": not config.get("standard_autograd", False),
                              **{key: norm(config.get(key)) for key, norm in FLOW_ARCH.items()}}
    else:
        kw = {"checkpoint": bool(config.get("checkpoint_folds"))}
        for key in ("features", "n_blocks", "depth"):
            if config.get(key) is not None:
                kw[key] = config[key]
    kw["mu_init"] = config.get("mu_init", 0.5)
    # "paper": the seed paper's start (the flow's mode; A^T y for the baselines). Configs written before
    # the option existed are "paper" and scalar-lambda.
    paper = "mode" if kind == "flow" else "backprojection"
    kw["start"] = paper if config.get("start", "paper") == "paper" else "smooth"
    from ..solvers.factory import build_solver as factory

    return factory(kind, physics, config["K"], config["channels"], config["size"], flow=flow, **kw)


@torch.no_grad()
def calibrate_solver(solver: nn.Module, xt: Tensor, config: Dict[str, Any], physics: nn.Module,
                     device: Union[str, torch.device] = "cpu", folds: Optional[Sequence[int]] = None
                     ) -> Dict[str, Any]:
    """Calibrate a fresh solver on ``config["calibrate"]`` training pairs (see ``train_solver``).

    The pairs are a seeded random draw from ``xt``, measured with ``physics`` at ``config["sigma"]``. The
    flow solver sets its start, ``mu_k`` and ``lambda_k``; a baseline only its smooth start's ``alpha``.
    With ``folds`` (a grown solver), the flow solver calibrates only those folds, and the start is kept;
    with ``config["keep_mu"]`` its steps stay at ``config["mu_init"]``.

    Returns:
        The calibration report (``start_psnr`` and ``psnr``, dB on the pairs; the flow's per-fold choices).
    """
    from ..metrics import psnr

    seed = int(config["seed"])
    g = torch.Generator().manual_seed(mix_seed(seed, 2, 0))
    idx = torch.randperm(len(xt), generator=g)[: int(config["calibrate"])]
    x = xt[idx].to(device)
    y = physics.measure(x, float(config["sigma"]), g)
    if callable(getattr(solver, "calibrate", None)):
        grids: Dict[str, Any] = {} if folds is None else {"folds": folds}
        if config.get("keep_mu"):
            grids["mu_grid"] = (float(config.get("mu_init", 0.5)),)
        return solver.calibrate(y, x, physics, **grids)
    report: Dict[str, Any] = {"start_alpha": None}
    if getattr(solver, "smooth_start", None) is not None and folds is None:
        report["start_alpha"] = solver.smooth_start.calibrate(y, x, physics)
    report["start_psnr"] = report["psnr"] = float(psnr(solver.start(y, physics).clamp(0, 1), x).mean())
    return report


def save_solver(path: Union[str, os.PathLike], solver: nn.Module, config: Dict[str, Any],
                flow_config: Optional[Dict[str, Any]] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write a solver with everything :func:`load_solver` needs (atomic, checksummed)."""
    from ..checkpoint import save_checkpoint

    state = {k: v.detach().cpu() for k, v in solver.state_dict().items()}
    return save_checkpoint(path, {"format": SOLVER_FORMAT, "config": dict(config), "state_dict": state,
                                  "flow_config": None if flow_config is None else dict(flow_config),
                                  "extra": dict(extra or {})}, keep_previous=False)


def load_solver(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                physics: Optional[nn.Module] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild a solver written by :func:`save_solver`, in evaluation mode.

    Args:
        path: the ``solver.pt`` file.
        device: where to put it.
        physics: the operator to start with (default: the task's, a random task's with a fixed mask).

    Returns:
        ``(solver, config)``.

    Raises:
        FileNotFoundError: no such file. ValueError: not a solver file.
        invprox.train.CheckpointError: truncated or corrupt.
    """
    from ..checkpoint import load_checkpoint

    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != SOLVER_FORMAT:
        raise ValueError(f"{path} is not a solver file written by `invprox train` (format {SOLVER_FORMAT})")
    config = dict(state["config"])
    shape = (config["channels"], config["size"], config["size"])
    if physics is None:
        physics = task_physics(config["task"], shape, config["physics_options"], torch.Generator())
    flow = None
    if state.get("flow_config") is not None:
        from ..flows.glow import Glow

        flow = Glow.from_config(state["flow_config"])
    solver = build_solver(config, physics, flow)
    load_model_state(solver, state["state_dict"])
    return solver.to(device).eval(), config


def load_source(config: Dict[str, Any]) -> Tuple[nn.Module, Optional[nn.Module], Dict[str, Any]]:
    """The trained solver ``config["init_from"]`` that a run grows from (:mod:`invprox.solvers.grow`).

    Returns:
        ``(source, flow, record)``: the source solver; for a flow prox the Glow to build the new solver on
        (the source's architecture); and what the run records of the source (path, folds, and the steps
        and training time of its run where its ``metrics.json`` lies beside it).

    Raises:
        FileNotFoundError: no such file. ValueError: not a solver file, another prox, image shape, task,
        ``lam_per``, start or option of :data:`FLOW_ARCH`, or a ``--flow`` of another architecture than
        the source's.
    """
    path = config["init_from"]
    source, scfg = load_solver(path)
    for key in ("prox", "channels", "size", "task", "lam_per", "start"):
        if key in scfg and scfg[key] != config.get(key):
            raise ValueError(f"--init-from {path}: its {key} is {scfg[key]!r}, "
                             f"this run's {config.get(key)!r}")
    for key, norm in FLOW_ARCH.items():
        if norm(scfg.get(key)) != norm(config.get(key)):
            raise ValueError(f"--init-from {path}: its {key} is {norm(scfg.get(key))}, "
                             f"this run's {norm(config.get(key))}")
    flow = None
    if config["prox"] == "flow":
        flow = copy.deepcopy(source.flows[0])
        if config.get("flow"):
            given = load_flow(config["flow"], config["size"], config["channels"])
            if dict(given.config) != {k: v for k, v in flow.config.items() if k != "cond_channels"}:
                raise ValueError(f"--flow {config['flow']} is another Glow than the one of --init-from "
                                 f"{path} (the new folds copy the source's): drop --flow")
    record: Dict[str, Any] = {"path": str(path), "K": source.K}
    metrics = Path(path).parent / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        record.update({k: m.get(k) for k in ("steps", "best_step", "train_cpu_s", "train_wall_s")})
    return source, flow, record


def run_flow(config: Dict[str, Any], state: Optional[Dict[str, Any]] = None
             ) -> Tuple[Optional[nn.Module], Optional[nn.Module], Optional[Dict[str, Any]]]:
    """What a training run builds its solver on: ``(flow, source, record)``.

    ``flow``: for a flow prox, the Glow (from the checkpoint ``state`` on resume, whose weights are in the
    state; from ``--init-from``'s source; else ``config["flow"]``); ``source`` and ``record``: the solver a
    fresh run grows from and what it records of it (:func:`load_source`), else ``None``.
    """
    if state is not None and state.get("flow_config") is not None:
        from ..flows.glow import Glow

        return Glow.from_config(state["flow_config"]), None, None
    if state is None and config.get("init_from"):
        source, flow, record = load_source(config)
        return flow, source, record
    if config["prox"] == "flow":
        flow = load_flow(config["flow"], config["size"], config["channels"])
        if config.get("level_steps") is not None:
            flow = flow.with_steps(list(config["level_steps"]))
        if config.get("widen"):
            flow = flow.widened(int(config["widen"]))
        return flow, None, None
    return None, None, None
