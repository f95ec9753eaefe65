"""The layering contract: every import inside ``rep_tune`` (module level or inside a function)
points down this list, never up and never sideways between two packages of one level.

    0  schema, safe_pickle, progress, extras, shipped, arch_spec, figures, schedule, registry   (leaves)
    1  arch_probe, checkpoints, deployable
    2  archs              the architecture table (probed shapes of timm models)
    3  methods            torch-free method registry
    4  layout             token layout of a config
    5  config             the one config object
    6  device             device profiles
    7  data               datasets and scenarios
    8  runtime | cost     training (torch) | the cost model (torch-free): neither imports the other
    9  profiler           measures a device with the runtime, fits the cost model
    10 export             other REP runtimes' configs
    11 search | verify
    12 cli

A new module joins a level here; an import that breaks the order fails this test with its file.
"""
from __future__ import annotations

import ast
from pathlib import Path

import rep_tune

LEVELS = [
    {"schema", "safe_pickle", "progress", "extras", "shipped", "arch_spec", "figures", "schedule", "registry"},
    {"arch_probe", "checkpoints", "deployable"}, {"archs"},
    {"methods"}, {"layout"}, {"config"}, {"device"}, {"data"},
    {"runtime", "cost"}, {"profiler"}, {"export"}, {"search", "verify"}, {"cli"},
]
LEVEL = {unit: i for i, units in enumerate(LEVELS) for unit in units}
ROOT = Path(rep_tune.__file__).parent


def unit_of(module: str) -> str | None:
    """The layer unit of ``rep_tune.x.y``: its top-level module or package (None for rep_tune itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "rep_tune" else None


def imports(root: Path = ROOT) -> list[tuple[str, str, int]]:
    """(importing file, imported rep_tune module, line) for every import in the package at ``root``."""
    out = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root.parent).with_suffix("")
        pkg = list(rel.parts[:-1])
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(pkg[:len(pkg) - node.level + 1]) if node.level else ""
                names = [".".join(p for p in (base, node.module or "") if p)]
            else:
                continue
            out += [(rel.as_posix(), n, node.lineno) for n in names if n.startswith("rep_tune")]
    return out


def violations(root: Path = ROOT) -> list[str]:
    """Imports that point up or sideways, as 'file:line imports module (levels)'."""
    wrong = []
    for path, target, line in imports(root):
        src, dst = unit_of(path.replace("/", ".")), unit_of(target)
        if src is None or dst is None or src == dst:
            continue
        if LEVEL[dst] >= LEVEL[src]:
            wrong.append(f"{path}.py:{line} imports {target} ({src} is level {LEVEL[src]}, {dst} level {LEVEL[dst]})")
    return wrong


def test_every_unit_has_a_level():
    units = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert units - set(LEVEL) == set(), "add the new module or package to LEVELS"


def test_imports_point_down_the_layers():
    assert violations() == []


def test_the_checker_reports_a_back_arrow_inside_a_function(tmp_path):
    """The test above can fail: a data module importing the runtime (the arrow this round removed)
    and a runtime module importing the cost model (siblings) are both reported."""
    pkg = tmp_path / "rep_tune"
    for sub in ("data", "runtime"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "tasks.py").write_text("def f():\n    import rep_tune.runtime.backbone\n")
    (pkg / "runtime" / "x.py").write_text("from rep_tune.cost import model\nfrom rep_tune.config import preset\n")
    assert violations(pkg) == [
        "rep_tune/data/tasks.py:2 imports rep_tune.runtime.backbone (data is level 7, runtime level 8)",
        "rep_tune/runtime/x.py:1 imports rep_tune.cost (runtime is level 8, cost level 8)"]


def test_only_the_ray_package_imports_ray():
    """Ray is optional (``rep-tune[ray]``): every module that imports it lives in ``search/ray/``."""
    outside = []
    for f in sorted(ROOT.rglob("*.py")):
        if "search/ray/" in f.as_posix():
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            outside += [f"{f.relative_to(ROOT.parent)}:{node.lineno}" for n in names if n.split(".")[0] == "ray"]
    assert outside == []
