"""The markdown report of ``solver_k.py``: per K and method, the scaling summary with the largest K in the
budget, the paper-scale projection (``solver_k_projection.py``) and the time profile."""

from __future__ import annotations

from typing import Any, Dict

from _common import describe_machine, fmt_bytes, markdown_table
from _harness import fmt_err, fmt_k, fmt_ratio
from solver_k_projection import render_projection


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
                         "-" if r.get("time") is None else f"{r['time'] * 1e3:.0f}",
                         fmt_ratio(r.get("time_ratio")),
                         "-" if r.get("wall") is None else f"{r['wall'] * 1e3:.0f}",
                         fmt_ratio(r.get("wall_ratio")),
                         fmt_err(r.get("grad_err"))])
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
                         " / ".join(fmt_ratio(t) for t in tr), fmt_err(hi.get("grad_err")),
                         fmt_k(fit["largest_k_act"]), fmt_k(fit["largest_k_peak"]),
                         fmt_k(fit.get("largest_k_tensor"))])
        md.append(f"\n## Scaling from K={kmin} to K={kmax}, and the largest K in {args.budget_str}\n")
        md.append("Largest K: LINEAR FIT in K (least squares over the measured K) of params + grads + Adam "
                  "+ act (resp. + peak RSS, + tensor peak), extrapolated to the budget; a fit, not a "
                  "measurement.\n")
        md.append(markdown_table(
            ["method", f"saved {kmax}/{kmin}", f"act {kmax}/{kmin}", f"peak {kmax}/{kmin}",
             f"tensor peak {kmax}/{kmin}", "act MiB per fold (fit)", "params+grads+Adam MiB per fold",
             f"time x std at K={kmin} / {4 if 4 in ks else kmin} / {kmax}", f"grad err K={kmax}",
             "largest K (act fit)", "largest K (peak fit)", "largest K (tensor-peak fit)"], summ))
    if payload.get("projection"):
        md += render_projection(payload["projection"])
    pr = payload.get("profile")
    if pr:
        st, iv = pr["standard"], pr["invprox"]
        tot = pr["profiled_step"]
        md.append(f"\n## Where invprox's time goes (K={pr['K']}, {pr['blocks']} blocks, "
                  f"{pr['clock']}, median of {pr['repeats']})\n")
        floor = ""
        if "floor" in pr:
            floor = (" Floor of a pure-inversion engine with one-pass rebuilds (its forward without a graph, "
                     "then standard's forward with a graph and standard's backward, over standard's "
                     f"forward + backward): {pr['floor']:.2f}x; the engine's forward + backward: "
                     f"{(iv['forward'] + iv['backward']) / (st['forward'] + st['backward']):.2f}x.")
        md.append(f"Step times without a profiler: invprox {iv['step'] * 1e3:.1f} ms (forward "
                  f"{iv['forward'] * 1e3:.1f}, backward {iv['backward'] * 1e3:.1f}), standard "
                  f"{st['step'] * 1e3:.1f} ms (forward {st['forward'] * 1e3:.1f}, backward "
                  f"{st['backward'] * 1e3:.1f}): {iv['step'] / st['step']:.2f}x.{floor} The engine's plan: "
                  f"{pr['plan']}. The split, from the engine's torch.profiler spans in a profiled "
                  "step (profiler overhead included):\n")
        rows = [[k, f"{v * 1e3:.1f}", f"{100 * v / tot:.0f}"] for k, v in pr["parts"].items()]
        md.append(markdown_table(["part", "ms (profiled)", "% of profiled step"], rows, "lrr"))
    return "\n".join(md)

