"""``solver_k.py --parts projection``: the paper-scale solver's memory on an 80 GB GPU, PROJECTED from CPU
measurements, and a time floor from a FLOP model.

The paper-scale configuration: 64x64 RGB, Glow 3 levels x 32 steps x 512 hidden, batch 16, untied folds.
Parameters are counted exactly (the model is built on the ``meta`` device, or on the CPU where that
fails); activation bytes per fold are measured at reduced image sizes (batch ``--proj-batch``) and scaled
by pixel count ``N = batch * H * W`` (an affine fit ``a + b N`` from the two largest sizes, checked
against the smallest); the largest K for an 80 GB H100 is then PROJECTED for standard, checkpoint per
fold and invprox.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections import defaultdict
from typing import Any, Dict, List, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from invprox.core.block import Inverse, accepts_cond
from invprox.core.memory import SavedTensors
from invprox.flows import Glow
from invprox.flows.coupling import _Coupling
from invprox.flows.layers import ChannelRange

from _common import markdown_table
from _harness import fmt_k
from solver_runner import Runner, accounted_forward, build_flow, build_solver, make_batch


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


def render_projection(pj: Dict[str, Any]) -> List[str]:
    """The report's projection section (markdown lines)."""
    md: List[str] = []
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
             f"{r['per_fold'] / 2**30:.3f}", f"{r['at_K4'] / 2**30:.1f}", fmt_k(r["k_max"])]
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
    return md
