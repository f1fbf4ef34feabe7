"""The main job (`invprox demo`) runs end to end in its quick configuration and writes what it promises."""

import json
from pathlib import Path

import pytest

from invprox.cli import main


@pytest.mark.slow
def test_demo_quick_writes_table_grid_memory_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("table", "grid", "memory_plot", "flow"):
        assert Path(summary["outputs"][key]).is_file(), key
    methods = summary["eval"]["methods"]
    assert methods[:3] == ["flow prox", "U-Net prox", "noisy input"]
    sweep = summary["memory"]["sweep"]
    assert sweep[-1]["standard"] > 2 * sweep[0]["standard"]  # standard autograd grows with K
    assert sweep[-1]["invprox"] < sweep[-1]["standard"] / 4
    printed = capsys.readouterr().out
    assert "standard autograd" in printed and "invprox engine" in printed and str(out) in printed
    # a second run never overwrites the first
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    assert (tmp_path / "demo-2" / "summary.json").is_file()
