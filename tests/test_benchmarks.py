"""The benchmark scripts run end to end at toy sizes and report what they measured.

The scripts are thin experiments on one harness (``benchmarks/_harness.py``, ``_common.py``,
``methods.py``); this catches a script that no longer fits its harness. The numbers themselves are checked
where they can be: every method's gradient against standard autograd.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_engine_depth_sweep_profile_and_drift(tmp_path):
    tiny = ["--batch", "2", "--size", "8", "--hidden", "8", "--out", str(tmp_path)]
    run("engine_depth.py", "--depths", "1", "3", "--repeats", "2", "--no-peak", "--profile", "2",
        "--methods", "standard", "checkpoint", "invprox", "invprox_keep", "rebuild_floor", *tiny)
    res = json.loads((tmp_path / "engine_depth_cpu.json").read_text())
    assert {(r["method"], r["depth"]) for r in res["rows"]} == {
        (m, d) for m in ("standard", "checkpoint", "invprox", "invprox_keep8", "rebuild_floor")
        for d in (1, 3)}
    for r in res["rows"]:
        assert len(r["cpu_times"]) == 2 and r["cpu_time"] > 0
        assert r["grad_err"] < 1e-5, r
    assert res["profile"]["profiled_spans"]["invprox.backward"] > 0
    assert "Split by the engine's torch.profiler spans" in (tmp_path / "engine_depth_cpu.md").read_text()
    run("engine_depth.py", "--drift", "2", "4", *tiny)
    drift = json.loads((tmp_path / "engine_depth_cpu_drift.json").read_text())["drift"]
    assert [r["depth"] for r in drift] == [2, 4]
    assert all(r["invprox_vs_f64"] < 1e-4 for r in drift)


@pytest.mark.slow
def test_solver_k_sweep_projection_and_profile(tmp_path):
    run("solver_k.py", "--ks", "1", "2", "--size", "8", "--levels", "2", "--steps", "1", "--hidden", "8",
        "--batch", "2", "--repeats", "2", "--no-peak", "--no-plots", "--methods", "standard", "checkpoint",
        "invprox_keepfold", "--parts", "sweep", "projection", "profile", "--proj-sizes", "8", "16",
        "--proj-levels", "2", "--proj-steps", "1", "--proj-hidden", "8", "--profile-k", "2",
        "--profile-repeats", "1", "--out", str(tmp_path))
    res = json.loads((tmp_path / "solver_k_cpu.json").read_text())
    rows = res["sweep"]["rows"]
    assert {(r["method"], r["K"]) for r in rows} == {
        (m, k) for m in ("standard", "checkpoint", "invprox_keepfold") for k in (1, 2)}
    for r in rows:
        assert r["status"] == "ok" and r["repeats"] == 2
        assert r["grad_err"] < 1e-4, r
    assert res["sweep"]["fits"]["invprox_keepfold"]["largest_k_act"] is not None
    assert len(res["projection"]["rows"]) == 10
    assert res["profile"]["invprox"]["step"] > 0
    md = (tmp_path / "solver_k_cpu.md").read_text()
    assert "PROJECTION" in md and "Where invprox's time goes" in md


def test_phase_times_rotates_the_methods_and_splits_their_steps(monkeypatch):
    """One warm-up round, then the methods in a rotating order; a phase marked twice in a step adds up."""
    monkeypatch.syspath_prepend(str(BENCH))
    from _harness import phase_times

    calls = []

    def step(name):
        def run(mark):
            calls.append(name)
            mark("forward")
            sum(range(20_000))
            mark("backward")
            mark("forward")
        return run

    m = phase_times({"a": step("a"), "b": step("b")}, repeats=3)
    assert calls == ["b", "a", "a", "b", "b", "a", "a", "b"]
    assert set(m) == {"a", "b"} and set(m["a"]) == {"forward", "backward", "step"}
    assert m["a"]["step"] >= m["a"]["backward"] > 0 and m["a"]["forward"] >= 0


@pytest.mark.slow
def test_compile_step_runs_and_compiles_the_same_function(tmp_path):
    """compile_step.py at toy size, tracing only (backend 'eager'): the script's plumbing, and the compiled
    solvers compute what the eager ones do."""
    from invprox.flows.glow import Glow

    glow = Glow(in_channels=3, image_size=8, levels=2, steps=1, hidden=4)
    glow.save(tmp_path / "flow.pt")
    run("compile_step.py", "--backend", "eager", "--size", "8", "--batch", "2", "--K", "1", "--features",
        "4", "--repeats", "1", "--flow", str(tmp_path / "flow.pt"), "--out", str(tmp_path))
    res = json.loads((tmp_path / "compile_step_cpu.json").read_text())
    assert [r["prox"] for r in res["rows"]] == ["flow", "unet", "resnet"]
    for r in res["rows"]:
        assert r["eager_s"] > 0 and r["compiled_s"] > 0 and r["output_rel_err"] < 1e-5, r


def test_table1_curves_place_a_grown_run_after_its_source(tmp_path):
    """A run grown with --init-from is plotted and tabled from its source's CPU minutes on."""
    def metrics(K, steps, cpu_s, init_from=None):
        val = [{"step": s, "val_psnr": 20.0 + s / 100, "train_cpu_s": cpu_s * s / steps}
               for s in range(100, steps + 1, 100)]
        return {"config": {"prox": "flow", "lr_net": 1e-4, "K": K}, "val": val, "steps": steps,
                "train_cpu_s": cpu_s, "status": "budget", "calibration": None, "init_from": init_from}

    runs, kept = tmp_path / "runs", tmp_path / "kept"
    (runs / "k4").mkdir(parents=True)
    kept.mkdir()  # k1 is gone from runs/: its copy kept by table1.sh's eval_test is read
    (kept / "table1_train_k1.json").write_text(json.dumps(metrics(1, 400, 120.0)))
    (runs / "k4" / "metrics.json").write_text(json.dumps(
        dict(metrics(4, 200, 60.0, {"K": 1, "steps": 400, "train_cpu_s": 120.0}),
             machine={"cpu": "Some CPU", "cpu_capability": "AVX2", "torch": "2.13.0"})))
    run("table1_curves.py", "--runs", "k1", "k4", "--runs-dir", str(runs), "--results-dir", str(kept),
        "--out", str(tmp_path), "--stem", "t")
    rows = {line.split(" | ")[0].strip("| "): line for line in (tmp_path / "t_training.md").read_text()
            .splitlines()[2:]}
    assert "| 400 |" in rows["k1"] and rows["k1"].endswith("| 2.0 |")
    assert "200 (K 4, after 400 at K 1)" in rows["k4"] and rows["k4"].endswith("| 3.0 |")  # 2 + 1 minutes
    md = (tmp_path / "t_training.md").read_text()  # the machine where the run recorded it (k4), not k1
    assert "- k4: Some CPU (AVX2), torch 2.13.0" in md and "- k1:" not in md
    assert (tmp_path / "t_curves.png").stat().st_size > 0


def test_fold_psnr_reports_every_fold(tiny_data, tmp_path):
    from invprox.train.solver_train import train_solver

    train_solver(str(tiny_data["data"]), str(tmp_path / "flow"), size=8, channels=1, K=2, batch=4,
                 max_steps=1, flow=tiny_data["flow"], calibrate=4, progress=False, log=lambda s: None)
    run("fold_psnr.py", str(tmp_path / "flow"), "--data", str(Path(tiny_data["data"]) / "train"), "--size",
        "8", "--channels", "1", "--n", "4", "--out", str(tmp_path), "--stem", "f")
    row = json.loads((tmp_path / "f.json").read_text())["rows"][0]
    assert row["K"] == 2 and len(row["folds"]) == 2 and all(v > 0 for v in [row["start"], *row["folds"]])
    assert "| flow | flow |" in (tmp_path / "f.md").read_text()


def test_flow_drift_reports_each_kind_of_flow_parameter(tiny_data, tmp_path):
    from invprox.train.solver_train import train_solver

    train_solver(str(tiny_data["data"]), str(tmp_path / "flow"), size=8, channels=1, K=1, batch=4,
                 max_steps=2, lr_net=1e-2, flow=tiny_data["flow"], calibrate=4, progress=False,
                 log=lambda s: None)
    out = run("flow_drift.py", str(tmp_path / "flow"), "--last", "--data",
              str(Path(tiny_data["data"]) / "train"), "--batches", "1").stdout
    rows = {line.split("|")[1].strip(): line.split("|")[3:5] for line in out.splitlines()
            if line.startswith("| ") and "count" not in line}
    assert set(rows) == {"coupling", "actnorm", "invconv"}  # the tiny Glow has one level: no split prior
    assert all(float(drift) > 0 and float(grad) > 0 for drift, grad in rows.values())


def test_adapt_choice_picks_exponents_on_validation_images_and_tests_them(tiny_data, tmp_path):
    from invprox.train.solver_train import train_solver

    common = dict(size=8, channels=1, K=1, batch=4, max_steps=1, val_data="holdout", n_val=4,
                  progress=False, log=lambda s: None)
    train_solver(str(tiny_data["data"]), str(tmp_path / "flow"), flow=tiny_data["flow"], calibrate=4,
                 **common)
    train_solver(str(tiny_data["data"]), str(tmp_path / "res"), prox="resnet", features=4, n_blocks=1,
                 **common)
    run("adapt_choice.py", "--model", f"flow={tmp_path / 'flow' / 'solver.pt'}", "--model",
        f"res={tmp_path / 'res' / 'solver.pt'}", "--sigmas", "0.1", "0.3", "--grid", "0", "1",
        "--out", str(tmp_path), "--stem", "a")
    res = json.loads((tmp_path / "a.json").read_text())
    flow, resnet = res["models"]["flow"], res["models"]["res"]
    assert len(flow["validation"]) == 4 and len(resnet["validation"]) == 2  # (P, Q) grid; P only
    best = max(r["mean"] for r in flow["validation"])
    chosen = [r for r in flow["validation"] if (r["P"], r["Q"]) == (flow["chosen"]["P"], flow["chosen"]["Q"])]
    assert chosen[0]["mean"] == best
    assert set(flow["test"]) == {"as trained", f"P = {flow['chosen']['P']:g}, Q = {flow['chosen']['Q']:g}"}
    assert "| flow | as trained |" in (tmp_path / "a.md").read_text()


def test_step_cost_times_and_profiles_trained_solvers(tiny_data, tmp_path):
    from invprox.train.solver_train import train_solver

    common = dict(size=8, channels=1, K=1, batch=4, max_steps=1, progress=False, log=lambda s: None)
    train_solver(str(tiny_data["data"]), str(tmp_path / "flow"), flow=tiny_data["flow"], calibrate=4,
                 **common)
    train_solver(str(tiny_data["data"]), str(tmp_path / "unet"), prox="unet", features=4, depth=1, **common)
    run("step_cost.py", str(tmp_path / "flow"), str(tmp_path / "unet"), "--data", tiny_data["data"], "--size",
        "8", "--channels", "1", "--batches", "2", "4", "--repeats", "2", "--warmup", "0", "--profile-steps",
        "1", "--out", str(tmp_path), "--stem", "s")
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert [r["prox"] for r in rows] == ["flow", "unet"]
    for r in rows:
        assert [c["batch"] for c in r["batch"]] == [2, 4] and all(c["ms_step"] > 0 for c in r["batch"])
        assert all(r["adam"][k] > 0 for k in ("loop", "foreach", "fused", "step_fused"))
        assert r["bf16"]["float32_ms"] > 0 and 0 < r["bf16"]["output_rel_err"] < 0.1
        share = r["profile"]["share"]
        assert abs(sum(share.values()) - 1) < 1e-9 and share["convolution"] > 0 and share["Adam"] > 0
    md = (tmp_path / "s.md").read_text()
    assert "## Adam's step alone (batch 2)" in md and "| flow (flow, K 1," in md
    with pytest.raises(AssertionError, match="no solver.pt"):
        run("step_cost.py", str(tmp_path))


def test_step_cost_sorts_profiler_ops_by_kind():
    sys.path.insert(0, str(BENCH))
    from step_cost import op_kind

    expected = {"aten::mkldnn_convolution": "convolution", "aten::convolution_backward": "convolution",
                "aten::addmm": "matrix product", "aten::linalg_lu_factor_ex": "matrix product",
                "aten::bmm": "matrix product", "aten::_fused_adam_": "Adam",
                "aten::convert_element_type": "other", "aten::mul": "other",
                "aten::upsample_bilinear2d": "other", "aten::sum": "other"}
    assert {n: op_kind(n) for n in expected} == expected


def test_compile_step_takes_trained_solvers(tiny_data, tmp_path):
    from invprox.train.solver_train import train_solver

    train_solver(str(tiny_data["data"]), str(tmp_path / "unet"), prox="unet", features=4, depth=1, size=8,
                 channels=1, K=1, batch=4, max_steps=1, progress=False, log=lambda s: None)
    run("compile_step.py", "--backend", "eager", "--batch", "2", "--repeats", "1", "--models",
        str(tmp_path / "unet"), "--out", str(tmp_path), "--tag", "t")
    res = json.loads((tmp_path / "compile_step_cpu_t.json").read_text())
    assert [r["prox"] for r in res["rows"]] == ["unet (unet)"]
    assert res["rows"][0]["compiled_s"] > 0 and res["rows"][0]["output_rel_err"] < 1e-5
    md = (tmp_path / "compile_step_cpu_t.md").read_text()
    assert "trained solvers" in md
    assert "Command: `python benchmarks/compile_step.py --backend eager --batch 2" in md


def test_command_line_reads_back_as_the_arguments_given(tmp_path):
    """The command a result file records is the one that ran: shell-quoted, from the repository root, and
    an empty argument list stays empty (``argv or sys.argv`` would record the test runner's arguments)."""
    import shlex

    sys.path.insert(0, str(BENCH))
    from _common import command_line, missing_solvers

    script = str(BENCH / "paired_diff.py")
    argv = ["runs/a@flow", "runs/b", "--names", "flow prox, untied", "U-Net prox"]
    line = command_line(script, argv)
    assert line.startswith("python benchmarks/paired_diff.py ")
    assert shlex.split(line)[2:] == argv
    assert command_line(script, []) == "python benchmarks/paired_diff.py"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "solver.pt").write_bytes(b"")
    assert missing_solvers([str(tmp_path / "run"), str(tmp_path)]) == [str(tmp_path)]


def _fake_eval(folder: Path, method: str, psnr, seed: int = 0) -> str:
    """An `invprox eval` output folder with per-image PSNR `psnr[sigma]` for `method` (and a noisy input)."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(
        {"task": "denoising", "data": "d", "split": "val", "n_images": len(next(iter(psnr.values()))),
         "seed": seed, "methods": [method, "noisy input"]}))
    lines = ["method,sigma,index,psnr,ssim"]
    for sigma, vals in psnr.items():
        for i, v in enumerate(vals):
            lines += [f"{method},{sigma},{i},{v},{v / 100}", f"noisy input,{sigma},{i},{v - 5},0.1"]
    (folder / "per_image.csv").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_paired_diff_pairs_images_and_averages_seeds(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    base = {0.1: 30 + rng.normal(size=200), 0.2: 25 + rng.normal(size=200)}
    a1 = _fake_eval(tmp_path / "a1", "flow", {s: v + 0.2 for s, v in base.items()})
    a2 = _fake_eval(tmp_path / "a2", "flow", {s: v + 0.4 for s, v in base.items()})
    b = _fake_eval(tmp_path / "b", "unet", {s: v + rng.normal(scale=0.05, size=200) for s, v in base.items()})
    run("paired_diff.py", "--a", a1, a2, "--b", b, "--resamples", "500", "--out", str(tmp_path),
        "--stem", "p")
    res = json.loads((tmp_path / "p.json").read_text())
    for row in res["rows"]:
        p = row["psnr"]
        assert abs(p["diff"] - 0.3) < 0.02 and p["ci95"][0] < p["diff"] < p["ci95"][1] < 0.32
        assert p["a_ahead"] > 0.99 and [round(x, 1) for x in p["run_pairs"]] == [0.2, 0.4]
    # another method of the same folder: the noisy input is 5 dB below
    run("paired_diff.py", "--a", f"{b}@noisy input", "--b", b, "--resamples", "100", "--out", str(tmp_path),
        "--stem", "n")
    rows = json.loads((tmp_path / "n.json").read_text())["rows"]
    assert all(abs(r["psnr"]["diff"] + 5) < 1e-9 for r in rows)
    other = _fake_eval(tmp_path / "c", "unet", base, seed=3)  # another noise draw: not paired
    for args, msg in [(["--a", a1, "--b", other], "not paired"),
                      (["--a", f"{a1}@bm3d", "--b", b], "no method"),
                      (["--a", str(tmp_path), "--b", b], "no results.json")]:
        with pytest.raises(AssertionError, match=msg):
            run("paired_diff.py", *args)


def _fake_run(runs: Path, name: str, budget: float, cpu_s: float, psnr: float) -> str:
    """A trained and tested run as budget_sweep.py reads it: metrics.json and eval_<name>/results.json."""
    (runs / name).mkdir(parents=True)
    (runs / name / "metrics.json").write_text(json.dumps(
        {"config": {"budget_minutes": budget}, "steps": int(cpu_s * 10), "train_cpu_s": cpu_s}))
    (runs / f"eval_{name}").mkdir()
    (runs / f"eval_{name}" / "results.json").write_text(json.dumps(
        {"n_images": 600, "mean": {name: {"0.2": {"psnr": psnr}, "0.25": {"psnr": psnr - 1}}}}))
    return name


def test_budget_sweep_leads_of_every_pair_and_the_budget_used(tmp_path):
    runs = tmp_path / "runs"
    a = [_fake_run(runs, f"a{b}", b, 60 * b, 25 + b / 100) for b in (5, 100)]
    b = [_fake_run(runs, f"b{b}", b, 60 * b * (0.7 if b == 100 else 1), 25.5) for b in (5, 100)]
    c = [_fake_run(runs, "c5", 5, 300, 24)]
    out = run("budget_sweep.py", "--runs-dir", str(runs), "--out", str(tmp_path), "--stem", "s", "--no-plot",
              "--series", "A=" + ",".join(a), "--series", "B=" + ",".join(b), "--series",
              "C=" + ",".join(c)).stdout
    assert "| B | `b100` | 100 | 70.0 | 42,000 | 25.50 | 24.50 |" in out  # stopped at 70 of 100 minutes
    leads = {tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")[3].strip()
             for line in out.splitlines() if " - " in line and line.startswith("| ")}
    assert leads == {("A - B", "5"): "-0.45", ("A - B", "100"): "+0.50", ("A - C", "5"): "+1.05",
                     ("B - C", "5"): "+1.50"}


def test_budget_sweep_reads_a_run_gone_from_runs_from_its_kept_copies(tmp_path):
    # runs/ does not outlive a machine: table1.sh's eval_test keeps table1_train_NAME.json and
    # table1_NAME_results.json, and the report reads those where the run folder is gone
    runs, kept = tmp_path / "runs", tmp_path / "kept"
    kept.mkdir()
    gone = _fake_run(runs, "gone100", 100, 6000, 25.8)
    shutil.move(str(runs / gone / "metrics.json"), str(kept / f"table1_train_{gone}.json"))
    shutil.move(str(runs / f"eval_{gone}" / "results.json"), str(kept / f"table1_{gone}_results.json"))
    here = _fake_run(runs, "here100", 100, 6000, 25.9)
    args = ["--runs-dir", str(runs), "--results-dir", str(kept), "--out", str(tmp_path), "--stem", "s",
            "--no-plot", "--series", f"A={gone}", "--series", f"B={here}"]
    out = run("budget_sweep.py", *args).stdout
    assert "| A | `gone100` | 100 | 100.0 | 60,000 | 25.80 | 24.80 |" in out
    assert "| A - B | 100 | -0.10 | -0.10 |" in out
    (kept / f"table1_{gone}_results.json").unlink()  # tested nowhere: the error names both places
    proc = subprocess.run([sys.executable, str(BENCH / "budget_sweep.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"eval_{gone}/results.json is missing and has no copy" in proc.stderr
    assert f"table1_{gone}_results.json" in proc.stderr
