"""Memory, time and gradient error of ONE training step of the unrolled flow-prox solver as the number of
folds K grows, by training method; a paper-scale projection; and where invprox's time goes.

The model is :class:`invprox.solvers.FlowProxSolver` (untied folds: every fold has its own copy of the
Glow, so parameters and optimizer state grow linearly in K) on denoising (``A = I``). One training step is

    out = solver(y); loss = mse(out, x); loss.backward(); adam.step()

with the same weights (a deep copy of one solver), the same batch and the same Adam settings for every
method:

    standard          ``solver.memory_efficient = False`` (ordinary autograd through every block)
    checkpoint        the same blocks, each fold's block sequence run as one plain function under
                      ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``
    memcnn            ``memcnn.InvertibleModuleWrapper(block, keep_input=False)`` around every block of
                      ``solver.chain.blocks``. memcnn 1.5.2 accepts several inputs, but it (a) calls the
                      inverse with the outputs only (a block ``(x, y) -> x'`` cannot be inverted without
                      ``y``) and (b) frees the storage of *every* input when ``keep_input=False``, which would
                      destroy the measurement shared by all folds. So blocks that take the measurement (the
                      DC steps, and the couplings, which accept and ignore it) are wrapped in a closure
                      module holding ``y`` (:class:`BindCond`); memcnn sees one-input blocks.
    invprox           ``solver.chain`` (the engine), pure inversion (``keep_every=None``)
    invprox_keepfold  the engine keeping each fold's input (``keep_every = solver.fold_blocks()``)
    invprox_norng     (optional) pure inversion with ``chain.preserve_rng_state = False``; since commit
                      64c0e21 the engine drops the random state of blocks that drew no random numbers, so
                      this differs from ``invprox`` only by the per-block capture-and-compare in the forward

Reported per method and K:

* ``saved``: bytes saved for backward by the forward and the loss (saved-tensor hooks,
  :func:`invprox.core.memory.saved_tensor_bytes`; parameters excluded, each storage once).
* ``held``: bytes kept alive outside saved-tensor hooks: attributes of custom autograd Functions' contexts
  (invprox: RNG states of blocks that drew random numbers, none here; memcnn: its inputs/outputs) and, for
  checkpoint, the inputs and CPU RNG state that each non-reentrant checkpoint's closure keeps (counted by
  the benchmark).
  ``act = saved + held`` is the activation memory of the step.
* ``params``, ``grads``, ``adam``: bytes of parameters, their gradients and Adam's state (apart from
  activations; all linear in K for untied folds).
* ``peak``: on CPU the peak RSS of a FRESH child process (this script with ``--child``) during one
  training step minus its RSS just before it, after building the solver and running one warm-up step on a
  batch of 1 (so ``.grad`` and Adam's state already exist and are not in ``peak``); see
  ``benchmarks/_common.py`` (``VmHWM`` reset, fixed glibc mmap threshold). On CUDA: the peak allocated
  during the step (``torch.cuda.max_memory_allocated``, in-process), above what was allocated before it.
* ``time``: per training step, median over repeats (methods interleaved in a rotating order). On CPU the
  primary number is the process CPU time (``time.process_time``, robust to other processes sharing the
  cores); wall time is reported too. Ratios are to ``standard`` in the same run.
* ``grad_err``: ``||g - g_standard|| / ||g_standard||`` over all parameter gradients of the first step.
  A step whose gradient is not finite skips the Adam update (as AMP's GradScaler does) and is marked.
* out of memory (``RuntimeError`` / ``MemoryError``) or above ``--budget`` is recorded, not raised; a
  method whose linear fit over the K already measured predicts more than the budget is skipped and marked.

``--budget`` also gives, per method, the largest K that fits: a LINEAR FIT in K of
``params + grads + adam + act`` (and of ``params + grads + adam + peak``) over the measured K,
extrapolated. On CUDA ``peak`` is the real allocator peak.

``--parts projection``: the paper-scale configuration (64x64 RGB, Glow 3 levels x 32 steps x 512 hidden,
batch 16, untied folds). Parameters are counted exactly (the model is built on the ``meta`` device, or on
the CPU where that fails); activation bytes per fold are measured at reduced image sizes (batch
``--proj-batch``) and scaled by pixel count ``N = batch * H * W`` (an affine fit ``a + b N`` from the two
largest sizes, checked against the smallest); the largest K for an 80 GB H100 is then PROJECTED for
standard, checkpoint per fold and invprox.

``--parts profile``: step times of invprox and standard at ``--profile-k`` (default 4), and the split of
invprox's step into forward, random-state capture, rebuilds, vector-Jacobian products, graph-leaf walks and
the rest, read from the engine's own ``torch.profiler`` spans (no monkeypatching).

Usage::

    python benchmarks/solver_k.py                                  # CPU, K = 1 2 4 8 16 32 64, all parts
    python benchmarks/solver_k.py --ks 1 2 4 --repeats 3 --parts sweep --no-peak     # quick look
    python benchmarks/solver_k.py --device cuda --batch 16 --size 64 --levels 3 --steps 32 --hidden 512 \\
        --budget 80GB --ks 1 2 4 8 16
    python benchmarks/solver_k.py --parts projection profile     # merged into the existing results
    python benchmarks/solver_k.py --parts peaks                  # re-run only the peak-memory children

Guard applied to every Glow built here (``fix_channel_range``): an earlier ``ChannelRange`` declared
``forward(x, *cond)`` without ``uses_cond``, so the engine passed the measurement to it and it forwarded it
to the wrapped ActNorm / InvConv1x1 (one argument): a solver on a Glow of 2 or more levels failed with a
TypeError. The current ``invprox/flows/layers.py`` sets ``uses_cond`` from the wrapped block, and the guard
then changes nothing.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import re
import sys
import time
import warnings
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    SPANS,
    child_report,
    ctx_held,
    describe_machine,
    fmt_bytes,
    machine_info,
    markdown_table,
    median,
    profiled_spans,
    run_child,
    step_peak_rss,
    storage_key,
    sync,
    write_results,
)
from methods import import_memcnn, memcnn_sequential  # noqa: E402

import invprox  # noqa: E402
from invprox.core.block import Inverse, accepts_cond  # noqa: E402
from invprox.core.memory import SavedTensors, tensor_bytes  # noqa: E402
from invprox.flows import Glow  # noqa: E402
from invprox.flows.coupling import _Coupling  # noqa: E402
from invprox.flows.layers import ChannelRange  # noqa: E402
from invprox.physics import make_physics  # noqa: E402
from invprox.solvers.flow_prox import FlowProxSolver  # noqa: E402

METHODS = ("standard", "checkpoint", "memcnn", "invprox", "invprox_keepfold", "invprox_norng")
DEFAULT_METHODS = METHODS[:5]
#: configuration keys that define a sweep (results of other parts are merged only when these agree)
SWEEP_KEYS = ("batch", "channels", "size", "levels", "steps", "hidden", "seed", "init_scale", "sigma", "lr",
              "flow", "device")
ENGINE_METHODS = ("standard", "invprox", "invprox_keepfold", "invprox_norng")
HERE = os.path.dirname(os.path.abspath(__file__))


# -- small helpers --------------------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(s: str) -> int:
    """``"8GiB"``, ``"80GB"``, ``"512MiB"``, ``"1e9"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", str(s))
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 8GiB, 80GB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate" in msg
                                            or "cannot allocate" in msg)


def cpu_clock(device: str) -> Callable[[], float]:
    """Process CPU time on CPU (robust to other processes), wall time on CUDA."""
    return time.process_time if device == "cpu" else time.perf_counter


# -- model ----------------------------------------------------------------------------------------------
def fix_channel_range(glow: Glow) -> int:
    """Guard against the old ChannelRange cond bug (module docstring); returns how many blocks it changed."""
    n = 0
    for b in glow.chain.blocks:
        if isinstance(b, ChannelRange) and "uses_cond" not in b.__dict__:
            b.uses_cond = accepts_cond(b.block)
            n += 1
    return n


def build_flow(args, levels=None, steps=None, hidden=None, size=None, channels=None,
               init_batch: int = 16, device=None) -> Glow:
    """A Glow with every layer non-trivial and ActNorm initialised on a fixed batch (deterministic in seed).

    With ``--flow PATH`` the saved Glow is loaded instead. Otherwise the zero-initialised last layers of
    the coupling networks and split priors get PyTorch's default init times ``--init-scale`` (so that
    every parameter has a gradient and the flow is not near the identity), and ActNorm is initialised
    from a fixed batch of smooth random images.
    """
    device = device or args.device
    if getattr(args, "flow", None) and levels is None:
        glow = Glow.load(args.flow)
    else:
        torch.manual_seed(args.seed)
        glow = Glow(channels or args.channels, size or args.size, levels=levels or args.levels,
                    steps=steps or args.steps, hidden=hidden or args.hidden, seed=args.seed)
        if args.init_scale > 0:
            for m in glow.modules():
                if isinstance(m, nn.Conv2d) and not m.weight.abs().sum():  # CouplingNet's last, _ZeroConv
                    m.reset_parameters()
                    with torch.no_grad():
                        m.weight.mul_(args.init_scale)
                        m.bias.mul_(args.init_scale)
    fix_channel_range(glow)
    glow = glow.to(device)
    if init_batch and not all(bool(b) for n, b in glow.named_buffers() if n.endswith("initialized")):
        x, _ = make_batch(args, init_batch, size=glow.image_size[0], channels=glow.in_channels,
                          device=device)
        glow.train()
        with torch.no_grad():
            glow(x - 0.5)
    return glow


def make_batch(args, batch: int, size=None, channels=None, device=None, seed_offset: int = 1):
    """``(x, y)``: smooth random images in [0, 1] (upsampled noise) and ``y = x + sigma * noise``."""
    size = size or args.size
    channels = channels or args.channels
    g = torch.Generator().manual_seed(args.seed + seed_offset)
    low = torch.rand(batch, channels, max(1, size // 4), max(1, size // 4), generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = (x + 0.1 * torch.rand(batch, channels, size, size, generator=g)).clamp(0, 1)
    y = x + args.sigma * torch.randn(x.shape, generator=g)
    dev = device or args.device
    return x.to(dev), y.to(dev)


def build_solver(flow: Glow, K: int, device) -> FlowProxSolver:
    physics = make_physics("denoising", (flow.in_channels, *flow.image_size))
    return FlowProxSolver(flow, physics, K=K).to(device)


class CheckpointFolds(nn.Module):
    """The solver's blocks, one ``torch.utils.checkpoint`` (non-reentrant) per fold."""

    def __init__(self, solver: FlowProxSolver):
        super().__init__()
        self.blocks = list(solver.chain.blocks)  # not registered: the solver owns them
        self.uses = [accepts_cond(b) for b in self.blocks]
        self.K, self.n = solver.K, solver.fold_blocks()
        #: storages (key -> bytes) of the inputs each checkpoint keeps, in the last forward; torch saves
        #: them with ``ctx.save_for_backward`` of a no-op Function, so the hooks see most of them already
        self.inputs: Dict[Any, int] = {}
        #: bytes of the CPU RNG states the checkpoints keep in their frames (preserve_rng_state=True)
        self.rng_bytes = 0

    def _fold(self, h: Tensor, y: Tensor, k: int) -> Tensor:
        for j in range(k * self.n, (k + 1) * self.n):
            h = self.blocks[j](h, y) if self.uses[j] else self.blocks[j](h)
        return h

    def forward(self, x0: Tensor, y: Tensor) -> Tensor:
        h, inputs = x0, {storage_key(y): y.untyped_storage().nbytes()}
        for k in range(self.K):
            inputs[storage_key(h)] = h.untyped_storage().nbytes()
            h = checkpoint(self._fold, h, y, k, use_reentrant=False)
        self.inputs = inputs
        self.rng_bytes = torch.get_rng_state().numel() * self.K
        return h

    def held_bytes(self, skip: set, rng: bool = True) -> int:
        """Bytes the checkpoints keep that are not in ``skip`` (what the hooks saw, parameters)."""
        return sum(v for k, v in self.inputs.items() if k not in skip) + (self.rng_bytes if rng else 0)


class Runner:
    """One training method on its own deep copy of the solver, with its own Adam."""

    def __init__(self, method: str, base: FlowProxSolver, lr: float):
        self.method = method
        self.solver = copy.deepcopy(base)
        self.model: Optional[nn.Module] = None
        s = self.solver
        if method == "standard":
            s.memory_efficient = False
        elif method in ("invprox", "invprox_keepfold", "invprox_norng"):
            s.memory_efficient = True
            s.chain.keep_every = s.fold_blocks() if method == "invprox_keepfold" else None
            s.chain.preserve_rng_state = method != "invprox_norng"
        elif method == "checkpoint":
            self.model = CheckpointFolds(s)
        elif method == "memcnn":  # the measurement reaches the DC blocks through BindCond
            self.model = memcnn_sequential(list(s.chain.blocks), [accepts_cond(b) for b in s.chain.blocks])
        else:
            raise ValueError(f"unknown method {method!r}")
        s.train()
        self.params = [p for p in s.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=lr)

    def forward(self, y: Tensor) -> Tensor:
        if self.model is None:
            return self.solver(y)
        s = self.solver
        x0 = s.start(y)
        y_flow = s.flow_measurement(y)
        return self.model(x0, y_flow) + 0.5

    def step(self, x: Tensor, y: Tensor) -> bool:
        """One training step; the Adam update is skipped (as AMP's GradScaler does) when a gradient is not
        finite, so that a method whose gradient breaks down (pure inversion at large K) can still be timed.
        Returns whether the update was applied."""
        self.opt.zero_grad(set_to_none=False)
        F.mse_loss(self.forward(y), x).backward()
        finite = all(bool(torch.isfinite(p.grad).all()) for p in self.params if p.grad is not None)
        if finite:
            self.opt.step()
        return finite

    def grad_vector(self) -> Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                          .double().cpu() for p in self.params])

    def state_bytes(self) -> Dict[str, int]:
        opt_t = [v for st in self.opt.state.values() for v in st.values() if isinstance(v, Tensor)]
        return {
            "params": tensor_bytes(self.params),
            "grads": tensor_bytes([p.grad for p in self.params if p.grad is not None]),
            "adam": tensor_bytes(opt_t),
            "n_params": sum(p.numel() for p in self.params),
        }


# -- accounting -----------------------------------------------------------------------------------------


def accounted_forward(r: Runner, x: Tensor, y: Tensor, rng: bool = True):
    """Forward + MSE loss under saved-tensor hooks; returns ``(out, loss, saved record, held bytes)``.

    ``held``: bytes kept outside the hooks (custom-Function contexts, checkpoint closures; with ``rng``
    the CPU random states of checkpointed folds too).
    """
    with SavedTensors(tuple(r.params)) as rec:
        out = r.forward(y)
        loss = F.mse_loss(out, x)
    skip = set(rec._seen) | {storage_key(p) for p in r.params}
    held = sum(ctx_held(loss, skip).values())
    if isinstance(r.model, CheckpointFolds):
        held += r.model.held_bytes(skip, rng=rng)
    return out, loss, rec, held


def first_step(r: Runner, x: Tensor, y: Tensor) -> Dict[str, Any]:
    """Forward + loss under saved-tensor hooks, the held bytes, backward, Adam step; returns the numbers."""
    r.opt.zero_grad(set_to_none=True)
    out, loss, rec, held = accounted_forward(r, x, y)
    del out
    loss.backward()
    g = r.grad_vector()
    finite = bool(torch.isfinite(g).all())
    if finite:
        r.opt.step()
    else:  # still allocate Adam's state, so that the memory accounting is complete
        for p in r.params:
            if p.grad is not None:
                p.grad.zero_()
        r.opt.step()
    res = {"saved": rec.bytes, "held": held, "act": rec.bytes + held, "loss": float(loss.detach()),
           "grad_finite": finite}
    res.update(r.state_bytes())
    res["state"] = res["params"] + res["grads"] + res["adam"]
    return res, g


# -- child (peak RSS of one step in a fresh process) ----------------------------------------------------
def child_args(args, method: str, K: int) -> List[str]:
    a = ["--child", method, "--ks", str(K), "--batch", str(args.batch), "--channels", str(args.channels),
         "--size", str(args.size), "--levels", str(args.levels), "--steps", str(args.steps),
         "--hidden", str(args.hidden), "--seed", str(args.seed), "--init-scale", str(args.init_scale),
         "--sigma", str(args.sigma), "--lr", str(args.lr), "--device", "cpu",
         "--threads", str(torch.get_num_threads())]
    if args.flow:
        a += ["--flow", args.flow]
    return a


def tensor_peak(fn: Callable[[], Any]) -> Dict[str, int]:
    """Peak bytes of live CPU tensors during ``fn()`` above those live before it (allocator level, like
    ``torch.cuda.max_memory_allocated``): every allocation and free recorded by ``torch.profiler``
    (``profile_memory=True``), summed in time order. Independent of glibc's heap, unlike the RSS."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    ev = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                if e.name() == "[memory]")
    cur = peak = 0
    for _, n in ev:
        cur += n
        peak = max(peak, cur)
    return {"peak": peak, "net": cur, "events": len(ev)}


def child_main(args) -> None:
    K = args.ks[0]
    flow = build_flow(args)
    r = Runner(args.child, build_solver(flow, K, "cpu"), args.lr)
    del flow
    xw, yw = make_batch(args, 1, seed_offset=7)
    r.step(xw, yw)  # warm-up: .grad and Adam's state allocated, libraries initialised
    x, y = make_batch(args, args.batch)
    gc.collect()
    res = step_peak_rss(lambda: r.step(x, y))
    gc.collect()
    tp = tensor_peak(lambda: r.step(x, y))  # a second step, profiled
    res.update(method=args.child, K=K, tensor_peak=tp["peak"], tensor_net=tp["net"],
               tensor_events=tp["events"], **r.state_bytes())
    child_report(res)


def cuda_peak(r: Runner, x: Tensor, y: Tensor) -> Dict[str, int]:
    xw, yw = x[:1], y[:1]
    r.step(xw, yw)
    dev = x.device
    torch.cuda.synchronize(dev)
    gc.collect()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    r.step(x, y)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    return {"delta": peak - base, "absolute": peak, "base": base}


# -- sweep ----------------------------------------------------------------------------------------------
def linear_fit(ks: Sequence[float], ys: Sequence[float]) -> Optional[Dict[str, float]]:
    """Least-squares ``y = a + b K`` (``None`` for fewer than 2 points)."""
    if len(ks) < 2:
        return None
    n = len(ks)
    mk, my = sum(ks) / n, sum(ys) / n
    sxx = sum((k - mk) ** 2 for k in ks)
    b = sum((k - mk) * (v - my) for k, v in zip(ks, ys)) / sxx
    a = my - b * mk
    ss_tot = sum((v - my) ** 2 for v in ys)
    ss_res = sum((v - a - b * k) ** 2 for k, v in zip(ks, ys))
    return {"a": a, "b": b, "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def largest_k(fit: Optional[Dict[str, float]], budget: float) -> Optional[float]:
    if fit is None:
        return None
    if fit["a"] > budget:
        return 0
    if fit["b"] <= 0:
        return math.inf
    return math.floor((budget - fit["a"]) / fit["b"])


def predicted_total(rows: List[Dict[str, Any]], K: int) -> Optional[float]:
    pts = [(r["K"], r["state"] + r["act"]) for r in rows if r.get("status") == "ok"]
    if not pts:
        return None
    if len(pts) == 1:
        k0, v0 = pts[0]
        return v0 * K / k0
    f = linear_fit([p[0] for p in pts], [p[1] for p in pts])
    return f["a"] + f["b"] * K


def sweep(args) -> Dict[str, Any]:
    methods = list(args.methods)
    if "memcnn" in methods and import_memcnn() is None:
        print("memcnn is not installed: skipping it", file=sys.stderr)
        methods.remove("memcnn")
    clock = cpu_clock(args.device)
    flow = build_flow(args)
    x, y = make_batch(args, args.batch)
    rows: List[Dict[str, Any]] = []
    by_method: Dict[str, List[Dict[str, Any]]] = {m: [] for m in methods}
    for K in args.ks:
        t_k = time.perf_counter()
        base = build_solver(flow, K, args.device)
        runners: Dict[str, Runner] = {}
        res: Dict[str, Dict[str, Any]] = {}
        grads: Dict[str, Tensor] = {}
        for m in methods:
            r0 = {"method": m, "K": K, "status": "ok"}
            pred = predicted_total(by_method[m], K)
            if pred is not None and pred > args.budget:
                r0.update(status="over budget (predicted by a linear fit)", predicted=pred)
                res[m] = r0
                continue
            try:
                runner = Runner(m, base, args.lr)
                out, g = first_step(runner, x, y)
                r0.update(out)
                if r0["state"] + r0["act"] > args.budget:
                    r0["status"] = "over budget"
                runners[m], grads[m] = runner, g
            except Exception as e:  # noqa: BLE001 - recorded, not raised
                r0["status"] = "out of memory" if is_oom(e) else f"error: {type(e).__name__}: {e}"[:300]
                runners.pop(m, None)
                gc.collect()
            res[m] = r0
        g_std = grads.get("standard")
        for m, g in grads.items():
            res[m]["grad_err"] = (float((g - g_std).norm() / g_std.norm().clamp_min(1e-300))
                                  if g_std is not None else None)
        del grads
        # timing: rotating order, median
        alive = [m for m in methods if m in runners]
        cpu_t: Dict[str, List[float]] = defaultdict(list)
        wall_t: Dict[str, List[float]] = defaultdict(list)
        t0 = time.perf_counter()
        for rep in range(args.repeats):
            if rep >= 3 and time.perf_counter() - t0 > args.time_budget:
                break
            order = alive[rep % len(alive):] + alive[: rep % len(alive)] if alive else []
            for m in order:
                try:
                    sync(args.device)
                    c0, w0 = clock(), time.perf_counter()
                    runners[m].step(x, y)
                    sync(args.device)
                    cpu_t[m].append(clock() - c0)
                    wall_t[m].append(time.perf_counter() - w0)
                except Exception as e:  # noqa: BLE001
                    res[m]["status"] = "out of memory" if is_oom(e) else f"error: {e}"[:300]
                    alive.remove(m)
        for m in methods:
            if cpu_t.get(m):
                res[m].update(time=median(cpu_t[m]), wall=median(wall_t[m]), times=cpu_t[m],
                              walls=wall_t[m], repeats=len(cpu_t[m]))
        if args.device.startswith("cuda") and not args.no_peak:
            for m in list(runners):
                try:
                    p = cuda_peak(runners[m], x, y)
                    res[m].update(peak=p["delta"], peak_absolute=p["absolute"])
                    if p["absolute"] > args.budget:
                        res[m]["status"] = "over budget"
                except Exception as e:  # noqa: BLE001
                    res[m]["status"] = "out of memory" if is_oom(e) else f"error: {e}"[:300]
        del runners, base
        gc.collect()
        if args.device == "cpu" and not args.no_peak:
            for m in methods:
                if res[m]["status"] == "ok":
                    cpu_peaks(args, res[m])
        t_std = res.get("standard", {}).get("time")
        w_std = res.get("standard", {}).get("wall")
        for m in methods:
            r = res[m]
            r["time_ratio"] = r["time"] / t_std if t_std and r.get("time") else None
            r["wall_ratio"] = r["wall"] / w_std if w_std and r.get("wall") else None
            rows.append(r)
            by_method[m].append(r)
        print(f"K={K}: " + ", ".join(
            f"{m} {res[m]['time'] * 1e3:.0f}ms" if res[m].get("time") else f"{m} {res[m]['status']}"
            for m in methods) + f" ({time.perf_counter() - t_k:.0f} s)", file=sys.stderr, flush=True)
    return {"rows": rows, "methods": methods, "fits": make_fits(args, rows, methods),
            "flow_params": sum(p.numel() for p in flow.parameters())}


def cpu_peaks(args, row: Dict[str, Any]) -> None:
    """Run the peak child for ``row`` (method, K) and store ``peak`` (RSS) and ``peak_tensor`` in it."""
    try:
        c = run_child(os.path.abspath(__file__), child_args(args, row["method"], row["K"]),
                      timeout=args.child_timeout)
        row["peak"] = c["delta"]
        row["peak_tensor"] = c["tensor_peak"]
        row["rss"] = {k: c[k] for k in ("base_rss", "base_peak", "peak", "peak_reset", "tensor_net",
                                        "tensor_events")}
        row.pop("peak_error", None)
    except Exception as e:  # noqa: BLE001 - a killed child is recorded
        row["peak_error"] = str(e)[-300:]


def make_fits(args, rows: List[Dict[str, Any]], methods: Sequence[str]) -> Dict[str, Any]:
    """Per method: linear fits in K of memory totals, and the largest K within ``args.budget``."""
    fits = {}
    for m in methods:
        ok = [r for r in rows if r["method"] == m and r["status"] in ("ok", "over budget") and "act" in r]
        ks = [r["K"] for r in ok]
        out: Dict[str, Any] = {"ks": ks, "state_fit": linear_fit(ks, [r["state"] for r in ok]),
                               "act_fit": linear_fit(ks, [r["act"] for r in ok])}
        for name, key in (("act", "act"), ("peak", "peak"), ("tensor", "peak_tensor")):
            pts = [r for r in ok if r.get(key) is not None]
            f = linear_fit([r["K"] for r in pts], [r["state"] + r[key] for r in pts])
            out[f"total_{name}_fit"] = f
            out[f"largest_k_{name}"] = largest_k(f, args.budget)
        fits[m] = out
    return fits


def refresh_peaks(args, payload: Dict[str, Any]) -> None:
    """``--parts peaks``: re-run the peak children of an existing sweep (same configuration) in place."""
    sw = payload["sweep"]
    for r in sw["rows"]:
        if r["status"] == "ok":
            t = time.perf_counter()
            cpu_peaks(args, r)
            print(f"peaks K={r['K']} {r['method']}: RSS {fmt_bytes(r.get('peak'))} MiB, tensors "
                  f"{fmt_bytes(r.get('peak_tensor'))} MiB ({time.perf_counter() - t:.0f} s)",
                  file=sys.stderr, flush=True)
    sw["fits"] = make_fits(args, sw["rows"], sw["methods"])


# -- paper-scale projection -----------------------------------------------------------------------------
def count_params_meta(cfg: Dict[str, Any]) -> Tuple[int, str]:
    """Exact parameter count of the paper-scale Glow: built on the meta device, else on the CPU."""
    kw = dict(levels=cfg["levels"], steps=cfg["steps"], hidden=cfg["hidden"])
    try:
        with torch.device("meta"):
            g = Glow(cfg["channels"], cfg["size"], **kw)
        how = "meta device"
    except Exception:  # noqa: BLE001 - the random rotations need a CPU generator
        g = Glow(cfg["channels"], cfg["size"], **kw)
        how = "CPU build (meta device failed)"
    return sum(p.numel() for p in g.parameters()), how


def _has_fused_rebuild(b: nn.Module) -> bool:
    """Whether the engine rebuilds ``b`` with a coupling's one-pass fused rebuild."""
    inner = b.block if isinstance(b, Inverse) else b
    if isinstance(inner, ChannelRange):
        inner = inner.block
    return isinstance(inner, _Coupling)


def _fold_saved(flow: Glow, args, size: int, batch: int, K: int, method: str) -> Dict[str, int]:
    """Saved + held bytes (device memory only: CPU RNG states excluded) of forward+loss at reduced size."""
    x, y = make_batch(args, batch, size=size, channels=flow.in_channels, device="cpu")
    r = Runner(method, build_solver(flow, K, "cpu"), 1e-4)
    if method.startswith("invprox"):
        r.solver.chain.preserve_rng_state = False  # RNG states live in host memory, not on the GPU
    out, loss, rec, held = accounted_forward(r, x, y, rng=False)  # CPU RNG states live in host memory
    res = {"saved": rec.bytes, "held": held, "act": rec.bytes + held}
    del out, loss
    if method == "standard" and K == 1:
        # per-block graph sizes: the largest is what the engine's backward materialises at a time
        x0 = r.solver.start(y)
        yf = r.solver.flow_measurement(y)
        h, per_block, flops = x0, [], {"fused": 0, "other": 0}
        for b in r.solver.chain.blocks:
            hin = h.detach().requires_grad_()
            with SavedTensors(tuple(r.params)) as rb, FlopCounterMode(display=False) as fc:
                out_b = b(hin, yf) if accepts_cond(b) else b(hin)
            per_block.append(rb.bytes)
            flops["fused" if _has_fused_rebuild(b) else "other"] += fc.get_total_flops()
            h = out_b.detach()
            del out_b
        res["per_block"] = per_block
        res["forward_flops"] = flops
        res["max_block"] = max(per_block)
        res["sum_blocks"] = sum(per_block)
        res["image_bytes"] = x.numel() * x.element_size()
    del r
    gc.collect()
    return res


def projection(args) -> Dict[str, Any]:
    """Largest K on an 80 GB H100 for the paper-scale solver, PROJECTED from CPU measurements."""
    cfg = {"channels": 3, "size": 64, "levels": args.proj_levels, "steps": args.proj_steps,
           "hidden": args.proj_hidden, "batch": args.proj_target_batch}
    t0 = time.perf_counter()
    glow_params, how = count_params_meta(cfg)
    p_fold = glow_params + 2  # + mu_k, lambda_k
    bytes_state_fold = 4 * p_fold * 4  # float32 params + grads + Adam exp_avg + exp_avg_sq
    sizes = sorted(args.proj_sizes)
    b = args.proj_batch
    meas: Dict[str, Dict[int, Dict[str, Any]]] = defaultdict(dict)
    ns = argparse.Namespace(**vars(args))
    ns.flow = None
    for s in sizes:
        flow = build_flow(ns, levels=cfg["levels"], steps=cfg["steps"], hidden=cfg["hidden"], size=s,
                          channels=cfg["channels"], init_batch=2, device="cpu")
        for m in ("standard", "checkpoint", "invprox", "invprox_keepfold"):
            for K in (1, 2):
                meas[f"{m}_K{K}"][s] = _fold_saved(flow, ns, s, b, K, m)
        del flow
        print(f"projection: size {s} measured ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
              flush=True)
    N = {s: b * s * s for s in sizes}
    n_target = cfg["batch"] * cfg["size"] ** 2

    def affine(vals: Dict[int, float], s1: int, s2: int):
        slope = (vals[s2] - vals[s1]) / (N[s2] - N[s1])
        return vals[s1] - slope * N[s1], slope

    def project(vals: Dict[int, float]) -> Dict[str, float]:
        a, sl = affine(vals, sizes[-2], sizes[-1])
        out = {"target": a + sl * n_target, "a": a, "per_pixel": sl,
               "ratio_largest_two": vals[sizes[-1]] / vals[sizes[-2]] if vals[sizes[-2]] else None,
               "pixel_ratio_largest_two": N[sizes[-1]] / N[sizes[-2]]}
        if len(sizes) >= 3:
            pred = a + sl * N[sizes[0]]
            out["check_size"] = sizes[0]
            out["check_rel_err"] = (pred - vals[sizes[0]]) / vals[sizes[0]] if vals[sizes[0]] else None
        return out

    q: Dict[str, Dict[str, float]] = {}
    for m in ("standard", "checkpoint", "invprox", "invprox_keepfold"):
        k1 = {s: meas[f"{m}_K1"][s]["act"] for s in sizes}
        k2 = {s: meas[f"{m}_K2"][s]["act"] for s in sizes}
        per_fold = {s: k2[s] - k1[s] for s in sizes}
        const = {s: 2 * k1[s] - k2[s] for s in sizes}
        q[m] = {"per_fold": project(per_fold)["target"], "const": project(const)["target"]}
        q[m]["per_fold_scaling"] = project(per_fold)
        q[m]["const_scaling"] = project(const)
    std1 = meas["standard_K1"]
    # the largest block graph at the target size: project every block, then take the largest
    nb = len(std1[sizes[0]]["per_block"])
    proj_blocks = [project({s: std1[s]["per_block"][j] for s in sizes}) for j in range(nb)]
    jmax = max(range(nb), key=lambda j: proj_blocks[j]["target"])
    max_block = dict(proj_blocks[jmax], block_index=jmax)
    image = cfg["batch"] * cfg["channels"] * cfg["size"] ** 2 * 4
    # the backward of one block: its graph + gradients of its output and input (3 image-size tensors)
    transient_block = max_block["target"] + 3 * image
    fold_act = q["standard"]["per_fold"]
    budget = args.proj_budget

    def kmax(const: float, per_fold: float) -> int:
        return max(0, math.floor((budget - const) / per_fold))

    rows = []
    for tied in (False, True):
        sf = 0 if tied else bytes_state_fold
        s0 = bytes_state_fold if tied else 0
        std_c, std_f = s0 + q["standard"]["const"] + transient_block, sf + fold_act
        # checkpoint: boundaries grow; during backward one fold is recomputed with its whole graph
        ck_c = s0 + q["checkpoint"]["const"] + fold_act + transient_block
        ck_f = sf + q["checkpoint"]["per_fold"]
        iv_c, iv_f = s0 + q["invprox"]["const"] + transient_block, sf + max(q["invprox"]["per_fold"], 0.0)
        ik_c = s0 + q["invprox_keepfold"]["const"] + transient_block
        ik_f = sf + max(q["invprox_keepfold"]["per_fold"], 0.0)
        # the engine returns all parameter gradients at the end of its backward: with .grad already allocated
        # (zero_grad(set_to_none=False), gradient accumulation) that is a second copy of them
        g_extra = 0 if tied else 4 * p_fold
        g_const = 4 * p_fold if tied else 0
        for m, c, f in (("standard", std_c, std_f), ("checkpoint per fold", ck_c, ck_f),
                        ("invprox (pure inversion)", iv_c, iv_f), ("invprox keep_every=fold", ik_c, ik_f),
                        ("invprox keep_every=fold, .grad preallocated", ik_c + g_const, ik_f + g_extra)):
            rows.append({"method": m, "tied": tied, "const": c, "per_fold": f,
                         "k_max": kmax(c, f) if f > 0 else math.inf,
                         "at_K4": c + 4 * f})
    fl = std1[sizes[-1]]["forward_flops"]
    tot = fl["fused"] + fl["other"]
    n_share = fl["other"] / tot if tot else 0.0
    time_floor = {  # FLOP model, backward = 2 x forward (conv/matmul FLOPs only)
        "standard": 1.0, "checkpoint per fold": 4 / 3, "memcnn (invert + recompute every block)": 5 / 3,
        "invprox (fused couplings)": (3 + (1 - n_share) + 2 * n_share) / 3,
    }
    return {
        "config": cfg, "glow_params": glow_params, "count_method": how, "params_per_fold": p_fold,
        "forward_flops_fold": fl, "nonfused_flop_share": n_share, "time_floor": time_floor,
        "state_bytes_per_fold": bytes_state_fold, "budget": budget, "measured_sizes": sizes,
        "measured_batch": b, "measurements": {k: {str(s): v for s, v in d.items()} for k, d in meas.items()},
        "per_method": q, "max_block": max_block, "transient_block": transient_block,
        "fold_activation": fold_act, "rows": rows, "seconds": time.perf_counter() - t0,
    }


# -- profile --------------------------------------------------------------------------------------------
def profile(args, K: int) -> Dict[str, Any]:
    """Split an invprox training step at ``K`` and compare with standard autograd.

    Step totals (invprox and standard, forward / backward / Adam) are timed without a profiler (median
    over repeats, interleaved). The split of invprox's step comes from the engine's own
    ``torch.profiler`` spans in profiled steps (no monkeypatching); profiled times include the
    profiler's overhead, so the report gives each part as a share of the profiled step.
    """
    clock = cpu_clock(args.device)
    flow = build_flow(args)
    base = build_solver(flow, K, args.device)
    x, y = make_batch(args, args.batch)
    std, inv = Runner("standard", base, args.lr), Runner("invprox", base, args.lr)
    runs: Dict[str, List[float]] = defaultdict(list)
    reps = max(3, args.profile_repeats)
    for rep in range(reps + 1):  # the first is a warm-up
        for name, r in ((("std", std), ("inv", inv)) if rep % 2 else (("inv", inv), ("std", std))):
            r.opt.zero_grad(set_to_none=False)
            c0 = clock()
            loss = F.mse_loss(r.forward(y), x)
            c1 = clock()
            loss.backward()
            c2 = clock()
            r.opt.step()
            c3 = clock()
            if rep:
                for part, v in (("forward", c1 - c0), ("backward", c2 - c1), ("adam", c3 - c2),
                                ("step", c3 - c0)):
                    runs[f"{name}_{part}"].append(v)
    m = {k: median(v) for k, v in runs.items()}

    def step() -> None:
        inv.opt.zero_grad(set_to_none=False)
        F.mse_loss(inv.forward(y), x).backward()

    spans = [profiled_spans(step)[0] for _ in range(reps)]
    sp = {k: median([s[k] for s in spans]) for k in SPANS}
    inner = sp["invprox.rebuild"] + sp["invprox.vjp"] + sp["invprox.graph_leaves"]
    parts = {
        "forward (no graph)": sp["invprox.forward"],
        "  of which random-state capture": sp["invprox.state_capture"],
        "backward": sp["invprox.backward"],
        "  rebuilds (fused: one network pass gives input and graph)": sp["invprox.rebuild"],
        "  vector-Jacobian products (torch.autograd.grad)": sp["invprox.vjp"],
        "  graph-leaf walks (blocks that declare nothing)": sp["invprox.graph_leaves"],
        "  other (engine loop, recomputes of kept blocks, small ops)":
            max(0.0, sp["invprox.backward"] - inner),
    }
    return {
        "K": K, "repeats": reps, "clock": "process CPU time" if args.device == "cpu" else "wall",
        "parts": parts, "blocks": len(base.chain), "plan": base.chain.plan().summary(),
        "profiled_step": sp["invprox.forward"] + sp["invprox.backward"],
        "standard": {k: m[f"std_{k}"] for k in ("forward", "backward", "adam", "step")},
        "invprox": {k: m[f"inv_{k}"] for k in ("forward", "backward", "adam", "step")},
    }


# -- rendering ------------------------------------------------------------------------------------------
def _e(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1e}"


def _r(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def _k(v) -> str:
    if v is None:
        return "-"
    if v == math.inf:
        return "unbounded (slope <= 0)"
    return f"{int(v):,}"


def render(args, payload: Dict[str, Any]) -> str:
    info, cfg = payload["machine"], payload["config"]
    md = [f"# Unrolled flow-prox solver: one training step vs K ({cfg['device']})\n",
          f"Batch {cfg['batch']} x {cfg['channels']} x {cfg['size']} x {cfg['size']}, Glow levels "
          f"{cfg['levels']}, steps {cfg['steps']}, hidden {cfg['hidden']} ({payload.get('flow_params', 0):,} "
          f"parameters per fold's Glow), untied folds, denoising sigma {cfg['sigma']}, MSE loss + Adam. "
          f"Machine: {describe_machine(info)}.\n",
          f"Command: `{payload['command']}`\n"]
    sw = payload.get("sweep")
    if sw:
        peak = "CUDA peak" if cfg["device"].startswith("cuda") else "peak RSS"
        clock = "CPU" if cfg["device"] == "cpu" else "wall"
        cpu = cfg["device"] == "cpu"
        head = ["K", "method", "status", "params MiB", "params+grads+Adam MiB", "saved MiB", "held MiB",
                "act MiB", f"{peak} MiB"] + (["tensor peak MiB"] if cpu else []) + [
                f"{clock} ms", "x std", "wall ms", "x std (wall)", "grad err"]
        body = []
        for r in sw["rows"]:
            body.append([r["K"], r["method"], r["status"], fmt_bytes(r.get("params")),
                         fmt_bytes(r.get("state")), fmt_bytes(r.get("saved")), fmt_bytes(r.get("held")),
                         fmt_bytes(r.get("act")), fmt_bytes(r.get("peak"))]
                        + ([fmt_bytes(r.get("peak_tensor"))] if cpu else []) + [
                         "-" if r.get("time") is None else f"{r['time'] * 1e3:.0f}", _r(r.get("time_ratio")),
                         "-" if r.get("wall") is None else f"{r['wall'] * 1e3:.0f}", _r(r.get("wall_ratio")),
                         _e(r.get("grad_err"))])
        md.append("## Per K and method\n")
        md.append("`saved`: saved-for-backward bytes (hooks, parameters excluded); `held`: bytes kept in "
                  "autograd-Function contexts / checkpoint closures (RNG states, memcnn outputs); "
                  "`act = saved + held`; params, grads and Adam state apart. "
                  f"`{peak}`: one step in a fresh child after a warm-up step (grads and Adam state "
                  "already allocated), above the state before the step"
                  + ("; `tensor peak`: the same at the level of live CPU tensors (every allocation and free "
                     "recorded by torch.profiler, summed in time order: the CPU analogue of CUDA's "
                     "max_memory_allocated, independent of glibc's heap)" if cpu else "")
                  + f". Time: median of interleaved repeats ({clock} time).\n")
        md.append(markdown_table(head, body, "rll" + "r" * (len(head) - 3)))
        ks = [k for k in cfg["ks"]]
        kmin, kmax = min(ks), max(ks)
        by = {(r["method"], r["K"]): r for r in sw["rows"]}
        summ = []
        for m in sw["methods"]:
            lo, hi = by.get((m, kmin), {}), by.get((m, kmax), {})
            fit = sw["fits"][m]

            def ratio(key, lo=lo, hi=hi):
                a, b = lo.get(key), hi.get(key)
                return "-" if not a or b is None else f"{b / a:.2f}"

            fa = fit["act_fit"]
            tr = [by.get((m, k), {}).get("time_ratio") for k in (kmin, 4 if 4 in ks else kmin, kmax)]
            summ.append([m, ratio("saved"), ratio("act"), ratio("peak"), ratio("peak_tensor"),
                         "-" if fa is None else f"{fa['b'] / 2**20:.3f}",
                         "-" if fit["state_fit"] is None else f"{fit['state_fit']['b'] / 2**20:.2f}",
                         " / ".join(_r(t) for t in tr), _e(hi.get("grad_err")),
                         _k(fit["largest_k_act"]), _k(fit["largest_k_peak"]),
                         _k(fit.get("largest_k_tensor"))])
        md.append(f"\n## Scaling from K={kmin} to K={kmax}, and the largest K in {args.budget_str}\n")
        md.append("Largest K: LINEAR FIT in K (least squares over the measured K) of params + grads + Adam "
                  "+ act (resp. + peak RSS, + tensor peak), extrapolated to the budget; a fit, not a "
                  "measurement.\n")
        md.append(markdown_table(
            ["method", f"saved {kmax}/{kmin}", f"act {kmax}/{kmin}", f"peak {kmax}/{kmin}",
             f"tensor peak {kmax}/{kmin}", "act MiB per fold (fit)", "params+grads+Adam MiB per fold",
             f"time x std at K={kmin} / {4 if 4 in ks else kmin} / {kmax}", f"grad err K={kmax}",
             "largest K (act fit)", "largest K (peak fit)", "largest K (tensor-peak fit)"], summ))
    pj = payload.get("projection")
    if pj:
        c = pj["config"]
        md.append("\n## PROJECTION: paper-scale solver on an 80 GB H100 (not measured on a GPU)\n")
        md.append(
            f"Configuration: {c['batch']} x {c['channels']} x {c['size']} x {c['size']}, Glow {c['levels']} "
            f"levels x {c['steps']} steps, hidden {c['hidden']}, untied folds (and tied, for comparison). "
            f"Glow parameters: {pj['glow_params']:,} (exact, {pj['count_method']}); per fold "
            f"{pj['params_per_fold']:,} with mu and lambda: params + grads + Adam (float32) = "
            f"{pj['state_bytes_per_fold'] / 2**30:.3f} GiB per fold. Usable device memory assumed "
            f"{pj['budget'] / 2**30:.1f} GiB.\n")
        md.append(
            f"Activation bytes measured on the CPU (saved-tensor hooks + held; CPU RNG states excluded, "
            f"they live in host memory) at image sizes {pj['measured_sizes']} with batch "
            f"{pj['measured_batch']}, K = 1 and 2 (per fold = K2 - K1, constant = 2 K1 - K2), then scaled "
            f"by pixel count N = batch x H x W with an affine fit a + b N through the two largest sizes.\n")
        sc = pj["per_method"]["standard"]["per_fold_scaling"]
        chk = ""
        if "check_size" in sc:
            chk = (f" The same fit predicts the size-{sc['check_size']} measurement to "
                   f"{100 * sc['check_rel_err']:+.2f}%.")
        md.append(
            f"Scaling check (standard, per fold): bytes ratio between the two largest sizes "
            f"{sc['ratio_largest_two']:.3f} for a pixel ratio {sc['pixel_ratio_largest_two']:.1f}.{chk} "
            f"Projected standard activations per fold: {pj['fold_activation'] / 2**30:.2f} GiB; largest "
            f"single-block graph (what the engine materialises at a time): "
            f"{pj['max_block']['target'] / 2**30:.3f} GiB.\n")
        body = [[r["method"], "tied" if r["tied"] else "untied", f"{r['const'] / 2**30:.2f}",
                 f"{r['per_fold'] / 2**30:.3f}", f"{r['at_K4'] / 2**30:.1f}", _k(r["k_max"])]
                for r in pj["rows"]]
        md.append(markdown_table(["method", "folds", "constant GiB", "GiB per fold", "projected GiB at K=4",
                                  "PROJECTED largest K"], body, "llrrrr"))
        if "time_floor" in pj:
            fl = pj["forward_flops_fold"]
            md.append(
                f"\nTime floor from a FLOP model (conv/matmul FLOPs counted with FlopCounterMode on one "
                f"fold at size {pj['measured_sizes'][-1]}; elementwise ops not counted; backward = 2 x "
                f"forward): blocks with a fused one-pass rebuild (couplings, split priors) carry "
                f"{100 * (1 - pj['nonfused_flop_share']):.2f}% of a fold's forward FLOPs "
                f"({(fl['fused'] + fl['other']) / 1e9:.2f} GFLOP). Floors (x standard): " + ", ".join(
                    f"{k} {v:.3f}" for k, v in pj["time_floor"].items()) + ".\n")
    pr = payload.get("profile")
    if pr:
        st, iv = pr["standard"], pr["invprox"]
        tot = pr["profiled_step"]
        md.append(f"\n## Where invprox's time goes (K={pr['K']}, {pr['blocks']} blocks, "
                  f"{pr['clock']}, median of {pr['repeats']})\n")
        md.append(f"Step times without a profiler: invprox {iv['step'] * 1e3:.1f} ms (forward "
                  f"{iv['forward'] * 1e3:.1f}, backward {iv['backward'] * 1e3:.1f}), standard "
                  f"{st['step'] * 1e3:.1f} ms (forward {st['forward'] * 1e3:.1f}, backward "
                  f"{st['backward'] * 1e3:.1f}): {iv['step'] / st['step']:.2f}x. The engine's plan: "
                  f"{pr['plan']}. The split, from the engine's torch.profiler spans in a profiled "
                  "step (profiler overhead included):\n")
        rows = [[k, f"{v * 1e3:.1f}", f"{100 * v / tot:.0f}"] for k, v in pr["parts"].items()]
        md.append(markdown_table(["part", "ms (profiled)", "% of profiled step"], rows, "lrr"))
    return "\n".join(md)


# -- main -----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="One training step of the unrolled flow-prox solver vs the number of folds K: memory, "
        "time, gradient error of standard autograd, checkpoint per fold, memcnn and the invprox engine; a "
        "paper-scale projection; a time profile of the engine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64], help="numbers of folds K")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS,
                   help="training methods (see the module docstring; invprox_norng is optional)")
    p.add_argument("--batch", type=int, default=4, help="batch size")
    p.add_argument("--channels", type=int, default=3, help="image channels")
    p.add_argument("--size", type=int, default=32, help="image height and width")
    p.add_argument("--levels", type=int, default=2, help="Glow levels")
    p.add_argument("--steps", type=int, default=4, help="Glow steps per level")
    p.add_argument("--hidden", type=int, default=32, help="hidden channels of the coupling networks")
    p.add_argument("--flow", default=None, help="load this saved Glow (Glow.save) instead of a random one")
    p.add_argument("--init-scale", type=float, default=1.0,
                   help="scale of the (PyTorch default) init given to the zero-initialised last layers; "
                   "0 keeps Glow's zeros")
    p.add_argument("--sigma", type=float, default=0.2, help="noise std of the synthetic measurement")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per method and K (median)")
    p.add_argument("--time-budget", type=float, default=240.0,
                   help="stop repeating at a K after this many seconds (at least 3 repeats)")
    p.add_argument("--budget", type=parse_bytes, default=parse_bytes("8GiB"),
                   help="memory budget: over it is recorded as such; the largest K that fits is fitted")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--child-timeout", type=float, default=1800.0, help="seconds per peak-RSS child")
    p.add_argument("--parts", nargs="+", default=["sweep", "projection", "profile"],
                   choices=["sweep", "projection", "profile", "peaks"],
                   help="what to run. Without 'sweep', the results are merged into the existing "
                   "<out>/<stem>.json when its sweep has the same configuration; 'peaks' re-runs only the "
                   "peak-memory children of that sweep")
    p.add_argument("--profile-k", type=int, default=4, help="K of the time profile")
    p.add_argument("--profile-repeats", type=int, default=7, help="repeats of the time profile")
    p.add_argument("--proj-levels", type=int, default=3, help="paper-scale Glow levels")
    p.add_argument("--proj-steps", type=int, default=32, help="paper-scale Glow steps per level")
    p.add_argument("--proj-hidden", type=int, default=512, help="paper-scale hidden channels")
    p.add_argument("--proj-target-batch", type=int, default=16, help="paper-scale batch")
    p.add_argument("--proj-sizes", type=int, nargs="+", default=[8, 16, 32],
                   help="reduced image sizes measured for the projection (divisible by 2**levels)")
    p.add_argument("--proj-batch", type=int, default=1, help="batch of the reduced-size measurements")
    p.add_argument("--proj-budget", type=parse_bytes, default=parse_bytes("76GiB"),
                   help="usable memory of the projected GPU (H100 80 GB: 79.2 GiB, minus context, cuDNN "
                   "workspace and fragmentation)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    p.add_argument("--stem", default=None, help="output file stem (default solver_k_<device>)")
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    p.add_argument("--fresh", action="store_true",
                   help="without 'sweep' in --parts, do not merge into the existing <out>/<stem>.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    args.budget_str = fmt_budget(args.budget)
    return args


def fmt_budget(n: int) -> str:
    for unit, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= unit:
            return f"{n / unit:.4g} {name}"
    return f"{n} B"


def git_commit() -> Optional[str]:
    """The checked-out commit (``git rev-parse --short HEAD``), ``None`` outside a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.child:
        child_main(args)
        return
    t0 = time.perf_counter()
    payload: Dict[str, Any] = {
        "benchmark": "solver_k",
        "command": "python " + " ".join(
            [os.path.relpath(os.path.abspath(__file__))] + (sys.argv[1:] if argv is None else list(argv))),
        "machine": machine_info(args.device, memcnn=getattr(import_memcnn(), "__version__", None),
                                invprox=invprox.__version__),
        "config": {k: v for k, v in vars(args).items() if k not in ("child",)},
        "git_commit": git_commit(),
        "workaround": "ChannelRange.uses_cond set from the wrapped block (see the module docstring)",
    }
    stem = args.stem or f"solver_k_{args.device.split(':')[0]}"
    path = os.path.join(args.out, stem + ".json")
    if "sweep" not in args.parts and not args.fresh and os.path.exists(path):
        # keep the parts of the existing results that are not re-run (same sweep configuration only)
        import json

        with open(path) as f:
            old = json.load(f)
        if all(old.get("config", {}).get(k) == getattr(args, k) for k in SWEEP_KEYS):
            old.setdefault("history", []).append({"parts": list(args.parts), "command": payload["command"]})
            payload = dict(old, machine=payload["machine"])
        elif "peaks" in args.parts:
            raise SystemExit(f"--parts peaks: {path} has another sweep configuration")
    if "peaks" in args.parts:
        if "sweep" not in payload:
            raise SystemExit(f"--parts peaks needs an existing sweep in {path}")
        refresh_peaks(args, payload)
    payload["flow_params"] = sum(p.numel() for p in build_flow(args, init_batch=0).parameters())
    if "sweep" in args.parts:
        payload["sweep"] = sweep(args)
        payload["sweep"].pop("flow_params")
    if "profile" in args.parts:
        payload["profile"] = profile(args, args.profile_k)
        print("profile done", file=sys.stderr, flush=True)
    if "projection" in args.parts:
        payload["projection"] = projection(args)
    payload["total_seconds"] = payload.get("total_seconds", 0) + time.perf_counter() - t0
    md = render(args, payload)
    paths = write_results(args.out, stem, payload, md)
    if not args.no_plots and "sweep" in payload:
        from plots import plot_solver_k

        paths += plot_solver_k(payload, os.path.join(args.out, stem))
    print(md)
    print("wrote " + ", ".join(paths), file=sys.stderr)


if __name__ == "__main__":
    main()
