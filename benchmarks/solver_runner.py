"""The model of ``solver_k.py``: the unrolled flow-prox solver trained one step at a time by each method.

:class:`Runner` holds one method (standard autograd, checkpoint per fold, memcnn per block, the engine) on
its own deep copy of one solver, with its own Adam; :func:`first_step` measures the memory of a step with
saved-tensor hooks; :func:`tensor_peak` and :func:`cuda_peak` the peak of live tensors; :func:`profile`
splits an engine step with the engine's own ``torch.profiler`` spans.
"""

from __future__ import annotations

import copy
import gc
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from invprox.core.block import accepts_cond
from invprox.core.memory import SavedTensors, tensor_bytes
from invprox.flows import Glow
from invprox.flows.layers import ChannelRange
from invprox.physics import make_physics
from invprox.solvers.flow_prox import FlowProxSolver

from _common import (
    SPANS,
    child_report,
    ctx_held,
    median,
    profiled_spans,
    span_parts,
    step_peak_rss,
    storage_key,
)
from _harness import phase_times
from methods import CheckpointFolds, memcnn_sequential


def fix_channel_range(glow: Glow) -> int:
    """Guard against an old ChannelRange bug; returns how many blocks it changed.

    Applied to every Glow built here: an earlier ``ChannelRange`` declared ``forward(x, *cond)`` without
    ``uses_cond``, so the engine passed the measurement to it and it forwarded it to the wrapped ActNorm /
    InvConv1x1 (one argument): a solver on a Glow of 2 or more levels failed with a TypeError. The current
    ``invprox/flows/layers.py`` sets ``uses_cond`` from the wrapped block, and the guard then changes
    nothing.
    """
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


def profile(args, K: int) -> Dict[str, Any]:
    """Split an invprox training step at ``K`` and compare with standard autograd.

    Step totals (invprox and standard, forward / backward / Adam) are timed without a profiler (median
    over repeats, interleaved). The split of invprox's step comes from the engine's own
    ``torch.profiler`` spans in profiled steps (no monkeypatching); profiled times include the
    profiler's overhead, so the report gives each part as a share of the profiled step.
    """
    flow = build_flow(args)
    base = build_solver(flow, K, args.device)
    x, y = make_batch(args, args.batch)
    std, inv = Runner("standard", base, args.lr), Runner("invprox", base, args.lr)
    reps = max(3, args.profile_repeats)

    def timed_step(r):
        def run(mark):
            r.opt.zero_grad(set_to_none=False)
            loss = F.mse_loss(r.forward(y), x)
            mark("forward")
            loss.backward()
            mark("backward")
            r.opt.step()
            mark("adam")
        return run

    m = phase_times({"inv": timed_step(inv), "std": timed_step(std)}, reps, args.device)

    def step() -> None:
        inv.opt.zero_grad(set_to_none=False)
        F.mse_loss(inv.forward(y), x).backward()

    spans = [profiled_spans(step)[0] for _ in range(reps)]
    sp = {k: median([s[k] for s in spans]) for k in SPANS}
    parts, step_total = span_parts(sp)
    return {
        "K": K, "repeats": reps, "clock": "process CPU time" if args.device == "cpu" else "wall",
        "parts": dict(parts), "blocks": len(base.chain), "plan": base.chain.plan().summary(),
        "profiled_step": step_total,
        "standard": m["std"],
        "invprox": m["inv"],
        # the least a pure-inversion engine can cost: its forward without a graph, then per block at
        # least one forward pass with a graph (a fused rebuild) and the backward standard autograd runs
        "floor": (m["inv"]["forward"] + m["std"]["forward"] + m["std"]["backward"])
        / (m["std"]["forward"] + m["std"]["backward"]),
    }


def child_main(args) -> None:
    """``solver_k.py --child METHOD``: the peak RSS and tensor peak of one step in this fresh process."""
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

