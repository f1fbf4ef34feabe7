"""`make bench-gpu` runs on the CPU at toy sizes: every part of the GPU suite works before a GPU is lent."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_suite_tiny_on_cpu(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), PY=sys.executable,
               OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout + proc.stderr
    for part in ("engine_k", "precision", "paper_scale"):
        assert f"{part}\texit 0" in summary, summary
    table = (tmp_path / "out" / "paper_scale" / "paper_scale.md").read_text()
    assert "flow prox" in table and "U-Net prox" in table and "ResNet prox" in table and "CPU" in table
    assert (tmp_path / "out" / "engine_k_cpu.json").is_file()
    assert not any((tmp_path / "out").rglob("*.pt"))  # checkpoints stay in WORK, out of the results
