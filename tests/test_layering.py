"""The house rule of megavg's packages: a package imports only packages on a lower floor.

Every ``import`` in megavg/ counts, at module level or inside a function (a deferred import is still a
dependency). Packages on the same floor do not import each other. The floors, lowest first:
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "megavg"

FLOORS: list[set[str]] = [
    {"utils"},  # errors, io, logging, device, lazy tensors, the meta-device tracer
    {"layers", "conditioning"},  # TE | torch linears, attention backends; what the DiT is conditioned on
    {"parallel"},  # process groups, Ulysses, halo, loading into ZeRO-3 partitions
    {"models", "data"},  # DC-AE-V, Wan DiT, the model folder; video decoding, shards, latent samples
    {"metrics"},  # PSNR / SSIM / LPIPS: used by training's evaluation and by ``python -m megavg.eval``
    {"infer"},  # the single-device runner, pipelines, pre-computation
    {"eval"},  # FVD, I3D, reconstruction and generation evaluation
    {"tasks"},  # one module per training objective
    {"train"},  # the trainer: config tree, DeepSpeed engine, checkpoints
    {"plan"},  # the run planner (builds trainer configs, traces tasks' models)
    {"repro"},  # the miniature reproduction: drives training, export and evaluation end to end
]
FLOOR = {package: level for level, packages in enumerate(FLOORS) for package in packages}


def package_of(path: Path, root: Path = ROOT) -> str:
    """The package a file of megavg/ belongs to ("" for megavg/__init__.py and other top-level modules)."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else ""


def imported_packages(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, package) of every megavg package an AST imports."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "megavg" else [f"megavg.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "megavg" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def violations(root: Path = ROOT) -> list[str]:
    """One line per import that reaches up a floor or across one."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        source = package_of(path, root)
        if not source:
            continue  # megavg/__init__.py: the public façade may import anything
        for line, target in imported_packages(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(root.parent)}:{line}"
            if target == source or not (root / target).is_dir():
                continue  # within a package, or a top-level module such as megavg/__init__.py
            if target not in FLOOR or source not in FLOOR:
                bad.append(f"{where}: {source} or {target} has no floor")
            elif FLOOR[target] >= FLOOR[source]:
                how = "across" if FLOOR[target] == FLOOR[source] else "up"
                bad.append(f"{where}: {source} imports {target} ({how} a floor)")
    return bad


def test_every_package_has_a_floor():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(FLOOR), "add the new package to FLOORS (or remove the stale entry)"


def test_imports_follow_the_floors():
    assert violations() == []


@pytest.mark.parametrize(
    ("source", "statement"),
    [
        ("data/x.py", "from megavg.models.wan import args"),
        ("train/x.py", "def f():\n    from megavg.plan import model"),
        ("parallel/x.py", "from megavg.models import registry"),
        ("tasks/x.py", "import megavg.train.engine"),
        ("eval/x.py", "from megavg import tasks"),
    ],
)
def test_the_check_sees_each_kind_of_reach(tmp_path, source, statement):
    """The five imports this rule was written against are each refused (module level or deferred)."""
    for package in FLOOR:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / source).write_text(statement + "\n")
    assert len(violations(tmp_path)) == 1
