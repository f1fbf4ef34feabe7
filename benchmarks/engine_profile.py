"""``engine_depth.py --profile DEPTH``: where the time of an engine step goes.

Step totals (invprox and standard) are timed without a profiler; the split comes from the engine's own
``torch.profiler.record_function`` spans in profiled steps (no monkeypatching), plus the top operators of
``torch.profiler`` for invprox and standard.
"""

from __future__ import annotations

from typing import Any, Dict, List

from _common import SPANS, markdown_table, median, profiled_spans, span_parts
from _harness import phase_times
from engine_blocks import build_blocks, loss_of, make_input, make_model, params_of, train_step, zero_grads


def profile(args, depth: int) -> Dict[str, Any]:
    """Split an invprox step at ``depth`` into its parts and list the top operators.

    Step totals (invprox and standard) are timed without a profiler (median over repeats; CPU seconds of
    the process on CPU, wall seconds on CUDA). The split comes from the engine's own
    ``torch.profiler.record_function`` spans in a profiled step (no monkeypatching); its times include
    the profiler's overhead, so the report gives each part as a share of the profiled step.
    """
    blocks = build_blocks(args, depth)
    x0 = make_input(args)
    inv, inv_blocks = make_model("invprox", blocks, args.keep_every)
    std, std_blocks = make_model("standard", blocks, args.keep_every)
    reps = max(3, args.repeats)

    def timed_step(model, bl):
        def run(mark):
            zero_grads(params_of(bl))
            out = loss_of(model(x0.clone().requires_grad_()))
            mark("forward")
            out.backward()
            mark("backward")
        return run

    m = phase_times({"std": timed_step(std, std_blocks), "inv": timed_step(inv, inv_blocks)}, reps,
                    args.device)
    ops, spans = {}, []
    for name, model, bl in (("standard", std, std_blocks), ("invprox", inv, inv_blocks)):
        for _ in range(reps if name == "invprox" else 1):
            zero_grads(params_of(bl))
            x = x0.clone().requires_grad_()
            sp, prof = profiled_spans(lambda: train_step(model, x))  # noqa: B023
            if name == "invprox":
                spans.append(sp)
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
        ops[name] = [
            {"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in rows
        ]
    profiled = {k: median([sp[k] for sp in spans]) for k in SPANS}
    seconds = {"forward": m["inv"]["forward"], "backward": m["inv"]["backward"],
               "standard_forward": m["std"]["forward"], "standard_backward": m["std"]["backward"]}
    clock = "process CPU time" if args.device == "cpu" else "wall time"
    return {"depth": depth, "seconds": seconds, "profiled_spans": profiled, "clock": clock,
            "top_ops": ops, "repeats": reps}


def render_profile(prof: Dict[str, Any]) -> List[str]:
    """The report's profile section (markdown lines)."""
    md: List[str] = []
    s, sp = prof["seconds"], prof["profiled_spans"]
    md.append(f"\nAn invprox step at depth {prof['depth']} ({prof['clock']}, median of "
              f"{prof['repeats']}): "
              f"forward {s['forward'] * 1e3:.1f} ms, backward {s['backward'] * 1e3:.1f} ms; standard "
              f"{s['standard_forward'] * 1e3:.1f} + {s['standard_backward'] * 1e3:.1f} ms. Split by the "
              "engine's torch.profiler spans (a profiled step, profiler overhead included):\n")
    parts, step = span_parts(sp)
    md.append(markdown_table(["part", "ms (profiled)", "% of the profiled step"],
                             [[p, f"{v * 1e3:.1f}", f"{100 * v / step:.0f}"] for p, v in parts]))
    return md
