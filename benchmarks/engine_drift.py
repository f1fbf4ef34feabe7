"""``engine_depth.py --drift``: how far pure inversion drifts from standard autograd in deep chains.

The gradient error of pure inversion and of ``keep_every`` against standard autograd (in the run's dtype,
and against standard autograd in float64, the exact reference), and the round trip of the chain.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any, Dict, Sequence

import torch
from torch import Tensor

from _common import describe_machine, markdown_table
from _harness import fmt_err, rel_err
from engine_blocks import (
    build_blocks,
    f64_reference,
    gradient_vector,
    make_input,
    make_model,
    method_label,
    roundtrip_error,
    train_step,
)


def drift_study(args, depths: Sequence[int]) -> Dict[str, Any]:
    """Gradient error of pure inversion and of ``keep_every`` against standard autograd at deep chains."""
    rows = []
    for depth in depths:
        t0 = time.perf_counter()
        blocks = build_blocks(args, depth)
        x0 = make_input(args)
        g: Dict[str, Tensor] = {}
        for m in ("standard", "invprox", "invprox_keep"):
            model, bl = make_model(m, blocks, args.keep_every)
            x = x0.clone().requires_grad_()
            train_step(model, x)
            g[m] = gradient_vector(bl, x)
            del model, bl, x
            gc.collect()
        row: Dict[str, Any] = {"depth": depth, "roundtrip_err": roundtrip_error(blocks, x0)}
        ref = None
        if args.dtype == torch.float32 and not args.no_f64_ref:
            ref = f64_reference(blocks, x0)
        for m in ("standard", "invprox", "invprox_keep"):
            label = method_label(m, args.keep_every)
            row[f"{label}_vs_standard"] = rel_err(g[m], g["standard"])
            row[f"{label}_vs_f64"] = rel_err(g[m], ref) if ref is not None else None
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"drift depth {depth}: " + ", ".join(
            f"{k} {v:.2e}" for k, v in row.items() if k != "depth" and v is not None
        ), file=sys.stderr, flush=True)
    return {"drift": rows}


def render_drift(args, payload: Dict[str, Any]) -> str:
    cfg, keep = payload["config"], f"invprox_keep{args.keep_every}"
    md = [
        f"# Drift of pure inversion vs depth ({args.device}, {cfg['dtype']})\n",
        f"Input {cfg['batch']} x {cfg['channels']} x {cfg['size']} x {cfg['size']}, hidden {cfg['hidden']}. "
        f"Machine: {describe_machine(payload['machine'])}.\n",
        f"Command: `{payload['command']}`\n",
        "Relative error of the whole gradient vector (parameters and input); `f64` is standard autograd "
        "in float64, the exact reference; `standard vs f64` is the float32 rounding floor.\n",
    ]
    body = [[
        r["depth"], fmt_err(r["roundtrip_err"]), fmt_err(r["standard_vs_f64"]),
        fmt_err(r["invprox_vs_standard"]), fmt_err(r["invprox_vs_f64"]),
        fmt_err(r[f"{keep}_vs_standard"]), fmt_err(r[f"{keep}_vs_f64"]),
    ] for r in payload["drift"]]
    md.append(markdown_table(
        ["depth", "round trip", "standard vs f64", "invprox vs standard", "invprox vs f64",
         f"{keep} vs standard", f"{keep} vs f64"], body, "r" * 7))
    return "\n".join(md)

