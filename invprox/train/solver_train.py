"""End-to-end training of an unrolled solver (flow, ResNet or U-Net prox): the ``invprox train`` subcommand.

Python::

    from invprox.train.solver_train import train_solver
    result = train_solver("celeba64", "runs/flow_k4", prox="flow", flow="runs/glow/flow.pt", K=4, sigma=0.2)

Command line::

    invprox train --data celeba64 --size 64 --prox flow --flow runs/glow/flow.pt --K 4 --sigma 0.2 \
        --out runs/flow_k4

The loss is the MSE between the solver's output and the clean image. Measurements are drawn per step from a
generator seeded with ``(seed, step)`` (inpainting: a new mask per batch), the image order of every epoch is a
function of ``(seed, epoch)``, and validation measurements are fixed per image
(:func:`~invprox.train.solver_setup.fixed_measurements`). Written to ``out``: ``checkpoint.pt`` (model,
optimizer, step, epoch, position, early-stopping state, history, RNG, config; atomic, after every validation
and when stopped), ``solver.pt`` (the best model by validation loss, loadable with
:func:`~invprox.train.solver_setup.load_solver` / ``invprox eval``) and ``metrics.json``. ``resume=True``
continues exactly where the checkpoint was written. Early stopping counts validations (one per epoch unless
``val_every``) without improvement; a validation added at the end of a run stopped by ``max_steps`` only
updates ``solver.pt``. A non-finite loss raises :class:`NonFiniteLossError`; the last checkpoint stays as
it was.

Under ``torchrun --nproc_per_node=N -m invprox train ...`` every process builds the same solver and takes
``batch / N`` images of each global batch (the measurement noise is drawn for the whole batch, then split);
DDP averages the gradients, stop decisions (budget, non-finite loss) are taken together, and rank 0 writes
the checkpoint, ``solver.pt`` and the metrics. The run equals one process on the global batch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor

from ..checkpoint import CheckpointError, load_latest, rng_state, save_checkpoint, set_rng_state
from ..distributed import (
    any_rank,
    barrier,
    cleanup,
    init_distributed,
    is_distributed,
    max_over_ranks,
    mean_over_ranks,
    wrap_ddp,
)
from ..metrics import psnr
from ..physics import canonical_task
from ..solvers.grow import grow_solver
from .config import RUN_KEYS, TrainConfig
from .loop_utils import (
    NonFiniteSteps,
    Progress,
    adam,
    epoch_order,
    lr_factor,
    machine,
    resolve_device,
    write_json,
)
from .solver_setup import (
    RANDOM_TASKS,
    build_solver,
    calibrate_solver,
    check_config,
    fixed_measurements,
    load_model_state,
    mirrored,
    mix_seed,
    physics_options,
    run_flow,
    save_solver,
    task_physics,
)

__all__ = ["train_solver", "NonFiniteLossError"]

_CKPT = "invprox.train_solver/1"
# options that may change on resume; everything else is taken from the checkpoint


class NonFiniteLossError(RuntimeError):
    """The training or validation loss became NaN or infinite."""


@torch.no_grad()
def _validate(solver, groups, xv: Tensor, dev) -> Dict[str, float]:
    was = solver.training
    solver.eval()
    se, ps = 0.0, 0.0
    for start, end, y, op in groups:
        x = xv[start:end].to(dev)
        out = solver(y.to(dev), op)
        se += float(((out - x) ** 2).flatten(1).mean(1).sum())
        ps += float(psnr(out.clamp(0, 1), x).clamp(max=100.0).sum())
    solver.train(was)
    return {"val_loss": se / len(xv), "val_psnr": ps / len(xv)}


def train_solver(
    data: str = "embedded",
    out: str = "runs/solver",
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **options: Any,
) -> Dict[str, Any]:
    """Train an unrolled solver end to end; see the module docstring.

    Args:
        data, out: training data (``"embedded"``, a folder, ``"celeba64"``) and output folder.
        progress: progress bar. log: where messages go.
        **options: any other field of :class:`~invprox.train.config.TrainConfig`, the one declaration of
            every option (``invprox train --help`` lists them with their help): task and its options,
            ``prox`` (``"flow"`` needs ``flow``, the ``flow.pt`` of ``invprox pretrain``), ``K``, ``sigma``,
            the start and ``calibrate``, learning rates, ``batch``, the budget (``epochs``, ``max_steps``,
            ``budget_minutes`` of ``budget_clock`` time), validation (``val_data``, possibly
            ``"holdout"``: the last ``n_val`` training images), ``seed``, ``device``, ``resume``.

    Returns:
        The metrics (also ``out/metrics.json``): ``history`` (train loss per epoch), ``val`` (per
        validation), ``best_val_loss``, ``best_step``, ``steps``, ``status``, ``config``, paths.

    Raises:
        TypeError: an unknown option. ValueError, FileNotFoundError: bad options or data.
        CheckpointError: unusable checkpoint on resume.
        NonFiniteLossError: the loss became NaN/inf (``checkpoint.pt`` keeps the last good state).
    """
    return run_training(TrainConfig(data=data, out=out, **options), progress=progress, log=log)


def run_training(config: TrainConfig, progress: bool = True, log: Callable[[str], None] = print
                 ) -> Dict[str, Any]:
    """Train the solver that ``config`` describes (what :func:`train_solver` and ``invprox train`` run)."""
    opts = config.as_dict()
    batch, out, resume, device = config.batch, config.out, config.resume, config.device
    epochs, max_steps = config.epochs, config.max_steps
    val_every, patience = config.val_every, config.patience
    budget_minutes, budget_clock = config.budget_minutes, config.budget_clock
    # under torchrun: one process per replica, each on batch / world_size images of every global batch;
    # DDP averages the gradients, so the run equals one process on the global batch. Rank 0 writes.
    own_group = not is_distributed()
    info = init_distributed()
    world, rank, main = info.world_size, info.rank, info.is_main
    if world > 1:
        if not isinstance(batch, int) or batch % world:
            raise ValueError(f"batch {batch!r} must be a multiple of the {world} processes "
                             "(it is the global batch)")
        if not main:
            log, progress = (lambda s: None), False
    out_dir = Path(out)
    ckpt_path = out_dir / "checkpoint.pt"
    state: Optional[Dict[str, Any]] = None
    if resume:
        state = load_latest(ckpt_path)
        if not isinstance(state, dict) or state.get("format") != _CKPT:
            raise CheckpointError(f"{ckpt_path} is not a checkpoint of `invprox train`")
        saved = dict(state["config"])
        differ = sorted(k for k in saved if k not in RUN_KEYS and k in opts and opts[k] != saved[k])
        if differ:
            log(f"resume: {', '.join(differ)} taken from the checkpoint")
        opts.update({k: v for k, v in saved.items() if k in opts and k not in RUN_KEYS})
    elif ckpt_path.exists():
        raise ValueError(f"{out_dir} already holds a training run; pass --resume to continue it "
                         "or choose another --out")
    barrier()  # every rank has looked at OUT before rank 0 writes there
    cfg = dict(opts)
    cfg["task"] = canonical_task(cfg["task"])
    check_config(cfg, budget_clock)
    cfg["cond_y"] = bool(cfg.get("cond_y") or cfg.get("cond_net"))  # cond_net's features join A^T y
    cfg["physics_options"] = physics_options(cfg["task"], cfg["p_missing"], cfg["kernel"], cfg["blur_std"],
                                             cfg["factor"], cfg["cs_ratio"], cfg["seed"])
    dev = info.device if world > 1 and info.device.type == "cuda" else resolve_device(device)
    flow_net, source, grown_from = run_flow(cfg, state)
    from .pretrain import solver_images

    xt, xv = solver_images(cfg)
    shape = tuple(xt.shape[1:])
    task, popts, sig, seed = cfg["task"], cfg["physics_options"], float(cfg["sigma"]), int(cfg["seed"])
    fixed_op = None if task in RANDOM_TASKS else task_physics(task, shape, popts)
    first_op = fixed_op or task_physics(task, shape, popts, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    solver = build_solver(cfg, first_op, flow_net).to(dev).train()
    layout = torch.channels_last if cfg.get("channels_last") else torch.contiguous_format
    if layout is torch.channels_last:
        solver = solver.to(memory_format=layout)
    flow_config = None if flow_net is None else dict(flow_net.config)
    rates = {k: cfg[k] for k in ("lr_split", "lr_coupling", "freeze_levels") if cfg.get(k) is not None}
    opt = adam(solver.param_groups(cfg["lr_net"], cfg["lr_step"], **rates), eps=cfg.get("adam_eps", 1e-8))
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]  # the schedule scales these (as torch's schedulers do)
        if group["lr"] == 0:  # kept as pre-trained: no gradients (nor their share of the clipped norm)
            for p in group["params"]:
                p.requires_grad_(False)
    groups = fixed_measurements(xv, range(len(xv)), task, popts, sig, seed, "val", cfg["batch"], fixed_op)
    bsz = min(cfg["batch"], len(xt))
    if bsz % world:
        raise ValueError(f"{len(xt)} training images give batches of {bsz}, not a multiple of the {world} "
                         "processes")
    per_epoch = len(xt) // bsz
    total = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
    r: Dict[str, Any] = {"epoch": 0, "pos": 0, "step": 0, "best_val": None, "best_step": None,
                         "es_best": None, "bad": 0, "history": [], "val": [], "run_sum": 0.0, "run_n": 0}
    if state is not None:
        load_model_state(solver, state["model"])
        opt.load_state_dict(state["optimizer"])
        for group in opt.param_groups:  # a checkpoint from before schedules: its lr is the base
            group.setdefault("initial_lr", group["lr"])
        r.update(state["run"])
        set_rng_state(state["rng"])
        log(f"resumed from {ckpt_path} at epoch {r['epoch']}, step {r['step']}")
    else:
        if source is not None:  # its folds first, then copies of its last one as the identity
            r["init_from"] = grown_from
            grow_solver(solver, source.to(dev))
            log(f"grown from {grown_from['path']}: {source.K} trained folds, {cfg['K'] - source.K} new")
        if cfg["calibrate"] and (source is None or cfg["prox"] == "flow"):  # a grown CNN keeps its start
            folds = None if source is None else range(source.K, cfg["K"])
            r["calibration"] = calibrate_solver(solver, xt, cfg, first_op, dev, folds)
            log(f"calibrated on {cfg['calibrate']} training pairs: PSNR {r['calibration']['psnr']:.2f} dB "
                f"(start {r['calibration']['start_psnr']:.2f} dB)")
    # --anchor: the Glows' weights at the start (the prior, or the grown source's), kept with the checkpoint
    pulled = ([p for f in solver.all_flows() for p in f.parameters() if p.requires_grad]
              if cfg.get("anchor") else [])
    anchor = state["anchor"] if state is not None and pulled else [p.detach().clone() for p in pulled]
    anchor = [a.to(p.device) for a, p in zip(anchor, pulled)]
    if world > 1 and dev.type == "cuda":  # batch norm over the global batch, as in one process
        solver = torch.nn.SyncBatchNorm.convert_sync_batchnorm(solver)
    model = wrap_ddp(solver, dev) if world > 1 else solver  # DDP broadcasts rank 0's parameters
    r.setdefault("train_cpu_s", 0.0)
    r.setdefault("train_wall_s", 0.0)
    nonfinite = NonFiniteSteps(config.skip_nonfinite)
    nonfinite.in_a_row, nonfinite.skipped = r.get("bad_run", 0), r.setdefault("skipped", [])
    used_key = "train_cpu_s" if budget_clock == "cpu" else "train_wall_s"
    budget_s = None if budget_minutes is None else 60 * budget_minutes
    scheduled_lr = cfg["lr_schedule"] != "constant" or cfg["warmup"] > 0

    def set_lr() -> None:
        """The schedule's multiplier for this step, applied to every group. How far the run has got is
        the larger of its steps and its budget used (the same on every rank)."""
        t = r["step"] / total
        if budget_s is not None:
            t = max(t, max_over_ranks(r[used_key] / budget_s))
        f = lr_factor(cfg["lr_schedule"], cfg["warmup"], r["step"], t)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * f

    t0, elapsed0, saved = time.time(), r.get("elapsed_s", 0.0), [r["step"] if state is not None else None]

    def checkpoint() -> None:
        r["elapsed_s"] = elapsed0 + time.time() - t0
        if not main:
            return
        save_checkpoint(ckpt_path, {"format": _CKPT, "config": cfg, "flow_config": flow_config,
                                    "model": solver.state_dict(), "optimizer": opt.state_dict(),
                                    "run": dict(r), "rng": rng_state(), "anchor": anchor})
        saved[0] = r["step"]

    def metrics(status: str) -> Dict[str, Any]:
        m = {"status": status, "steps": r["step"], "epochs_done": r["epoch"], "best_val_loss": r["best_val"],
             "best_step": r["best_step"], "history": r["history"], "val": r["val"], "n_train": len(xt),
             "n_val": len(xv), "train_cpu_s": r["train_cpu_s"],
             "train_wall_s": r["train_wall_s"], "calibration": r.get("calibration"),
             "skipped_steps": r.get("skipped", []), "init_from": r.get("init_from"),
             "device": str(dev), "machine": machine(dev), "world_size": world,
             "wall_time_s": elapsed0 + time.time() - t0,
             "config": cfg, "solver": str(out_dir / "solver.pt"), "checkpoint": str(ckpt_path)}
        if main:
            write_json(out_dir / "metrics.json", m)
        return m

    def last_good() -> str:
        if saved[0] is None:
            return "No checkpoint was written before (nothing to resume)."
        return f"The last good state (step {saved[0]}) is in {ckpt_path}; --resume continues from it."

    def non_finite(what: str) -> NonFiniteLossError:
        """Close the bar, write the metrics, and the error to raise (before any update of this step)."""
        bar.close()
        metrics("non_finite")
        return NonFiniteLossError(
            f"{what} at step {r['step'] + 1} (epoch {r['epoch'] + 1}); stopped. {last_good()} "
            "Try a lower --lr-net/--lr-step, or --keep-every for the flow engine.")

    def validate(scheduled: bool) -> None:
        v = _validate(solver, groups, xv, dev)
        if not math.isfinite(v["val_loss"]):
            bar.close()
            metrics("non_finite")  # the metrics say how the run ended, as for a non-finite training step
            raise NonFiniteLossError(f"validation loss is {v['val_loss']} at step {r['step']}; stopped. "
                                     f"{last_good()}")
        r["val"].append({"step": r["step"], "epoch": r["epoch"], "scheduled": scheduled,
                         "train_cpu_s": r["train_cpu_s"], "lr_net": opt.param_groups[0]["lr"], **v})
        if r["best_val"] is None or v["val_loss"] < r["best_val"]:
            r["best_val"], r["best_step"] = v["val_loss"], r["step"]
            if main:
                save_solver(out_dir / "solver.pt", solver, cfg, flow_config, {"step": r["step"], **v})
        if scheduled:
            improved = r["es_best"] is None or v["val_loss"] < r["es_best"]
            r["es_best"] = v["val_loss"] if improved else r["es_best"]
            r["bad"] = 0 if improved else r["bad"] + 1

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    bar = Progress(total, r["step"], "train", progress, budget_s, used=lambda: r[used_key])
    status = "finished"
    while r["step"] < total:
        if patience and r["bad"] >= patience:
            status = "early_stopped"
            break
        if budget_minutes is not None and any_rank(r[used_key] >= budget_s):
            status = "budget"
            break
        order = epoch_order(len(xt), seed, r["epoch"])
        x = xt[order[r["pos"] * bsz : (r["pos"] + 1) * bsz]].to(dev)
        if cfg.get("flip"):  # drawn for the global batch, before a rank takes its share
            x = mirrored(x, seed, r["step"])
        g = torch.Generator().manual_seed(mix_seed(seed, 1, r["step"]))
        op = fixed_op if fixed_op is not None else task_physics(task, shape, popts, g)
        y = op.measure(x, sig, g)
        x, y = x.contiguous(memory_format=layout), y.contiguous(memory_format=layout)
        if world > 1:  # this rank's share of the global batch (the noise was drawn for all of it)
            part = slice(rank * (bsz // world), (rank + 1) * (bsz // world))
            x, y = x[part], y[part]
        if scheduled_lr:
            set_lr()
        c0, w0 = time.process_time(), time.perf_counter()
        loss = ((model(y, op) - x) ** 2).mean()
        lv = mean_over_ranks(float(loss.detach()))
        bad = NonFiniteSteps.check(lv)
        opt.zero_grad(set_to_none=True)
        if bad is None:
            loss.backward()
            for p, p0 in zip(pulled, anchor):  # the gradient of (anchor / 2) ||theta - theta_0||^2
                if p.grad is not None:
                    p.grad.add_(p.detach() - p0, alpha=cfg["anchor"])
            # the global norm, clipped when asked (an infinite bound only measures it)
            gnorm = float(torch.nn.utils.clip_grad_norm_(solver.parameters(), cfg["clip_grad"] or math.inf))
            bad = NonFiniteSteps.check(lv, gnorm)
        if bad is None:
            nonfinite.good()
            opt.step()
        else:  # skip up to skip_nonfinite in a row, then stop
            if not nonfinite.skip(r["step"] + 1, bad):
                raise non_finite(bad)
            opt.zero_grad(set_to_none=True)
            log(f"step {r['step'] + 1}: {bad}; skipped without an update ({nonfinite.in_a_row} in a row)")
        r["bad_run"] = nonfinite.in_a_row
        r["train_cpu_s"] += time.process_time() - c0
        r["train_wall_s"] += time.perf_counter() - w0
        r["step"], r["pos"] = r["step"] + 1, r["pos"] + 1
        r["run_sum"], r["run_n"] = r["run_sum"] + lv, r["run_n"] + 1
        bar.update(loss=f"{lv:.4g}")
        end_epoch = r["pos"] >= per_epoch
        if end_epoch:
            r["history"].append({"epoch": r["epoch"] + 1, "step": r["step"],
                                 "train_loss": r["run_sum"] / max(r["run_n"], 1)})
            r["epoch"], r["pos"], r["run_sum"], r["run_n"] = r["epoch"] + 1, 0, 0.0, 0
        due = r["step"] % val_every == 0 if val_every else end_epoch
        if due:
            validate(scheduled=True)
            v = r["val"][-1]
            log(f"step {r['step']} (epoch {r['epoch']}): val loss {v['val_loss']:.5g}, "
                f"PSNR {v['val_psnr']:.2f} dB")
        if due or end_epoch:
            checkpoint()
            metrics("running")
    bar.close()
    if status == "finished" and r["step"] < epochs * per_epoch:
        status = "max_steps"
    if not r["val"] or r["val"][-1]["step"] != r["step"]:
        validate(scheduled=False)
    checkpoint()
    m = metrics(status)
    log(f"{status}: {r['step']} steps, best val loss {r['best_val']:.5g} at step {r['best_step']}; "
        f"wrote {out_dir}")
    if own_group:
        del model  # the DDP reducer must not hold the process group's last reference (see cleanup)
        cleanup()
    return m

