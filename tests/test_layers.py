"""Imports point downward only (DESIGN.md, "Layers"), including imports inside functions.

Layers, bottom up: ``core`` (the engine: torch alone) and two torch-only utilities that import nothing
of invprox (``checkpoint``: atomic files; ``metrics``: PSNR, SSIM); ``flows``, ``physics`` and ``testing``
on top of them; ``data`` on physics (the operators' noise); ``solvers`` on flows and physics; ``train``,
``cli``, ``__main__`` and ``distributed`` (the application) on everything.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "invprox"

ALLOWED = {
    "core": {"core"},
    "checkpoint": set(),
    "metrics": set(),
    "flows": {"core", "checkpoint", "flows"},
    "physics": {"core", "physics"},
    "data": {"core", "physics", "data"},
    "testing": {"core", "testing"},
    "solvers": {"core", "checkpoint", "metrics", "flows", "physics", "solvers"},
}
APP = {"train", "cli", "distributed", "__init__", "__main__"}


def _layer(parts):
    """``("invprox", "flows", "glow")`` -> ``"flows"``."""
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, text=None):
    """``(line, target parts)`` of every invprox import in the module at ``path`` (source ``text``)."""
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]  # ("invprox", "flows")
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + tuple(node.module.split(".") if node.module else ())
            else:
                target = tuple((node.module or "").split("."))
            if target[0] == "invprox":
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = tuple(alias.name.split("."))
                if target[0] == "invprox":
                    yield node.lineno, target


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in MODULES:
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        layer = _layer(parts)
        assert layer in ALLOWED or layer in APP, f"{path}: no layer for {layer!r}; add it to ALLOWED"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_point_downward(path):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    layer = _layer(parts)
    if layer in APP:
        return
    for line, target in _imports(path):
        assert len(target) > 1, f"{path}:{line} imports the invprox package from layer {layer!r}"
        assert _layer(target) in ALLOWED[layer], (
            f"{path}:{line} imports {'.'.join(target)}: layer {layer!r} may import only "
            f"{sorted(ALLOWED[layer])}"
        )


def test_the_check_resolves_relative_imports():
    chain = ROOT / "core" / "chain.py"
    (_, up), = _imports(chain, "from ..solvers import FlowProxSolver\n")
    (_, same), = _imports(chain, "def f():\n    from .block import Inverse\n")
    assert up == ("invprox", "solvers") and _layer(up) not in ALLOWED["core"]
    assert same == ("invprox", "core", "block") and _layer(same) in ALLOWED["core"]
