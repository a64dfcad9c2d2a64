"""The package's layering, kept true: every import goes down (or stays in its layer), and no private name
crosses a module boundary.

Layers (README, "For contributors"), each importing only from itself and the layers below::

    5  report/, testing.py                 the report CLI; helpers for other projects' tests
    4  claims/                             the registry: collects every Claim
    3  theory/, experiments/               derivation/erratum families | one module per empirical claim
    2  data/, nets.py, train.py, ensemble.py, fid/     data, networks, training, distances
    1  objectives.py, likelihoods.py, posteriors.py, autodiff.py (and the package face __init__.py)
    0  base/                               evidence, verdicts, tolerances, statistics, files, validation

Every module of ``gracheck/`` is parsed with :mod:`ast`; imports inside functions count too. The
checks fail on (1) an import of a higher layer, (2) an import of the package face ``gracheck``
itself from inside the package (take names from the module that defines them), (3) ``from M import
_x`` of a private name defined in another module, (4) an import of another package's private module
(``gracheck.experiments._common`` from ``report/``: use the package's public names), and (5) a module
that no layer claims. ``benchmarks/`` is held to rules (3) and (4).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "gracheck"

LAYERS: dict[str, int] = {
    "gracheck.base": 0,
    "gracheck": 1,  # the package face: re-exports layer 0-1 names only
    "gracheck.objectives": 1,
    "gracheck.likelihoods": 1,
    "gracheck.posteriors": 1,
    "gracheck.autodiff": 1,
    "gracheck._chain": 1,  # the engine's chain route, a private module of autodiff's layer
    "gracheck.data": 2,
    "gracheck.nets": 2,
    "gracheck.train": 2,
    "gracheck.ensemble": 2,
    "gracheck.fid": 2,
    "gracheck.theory": 3,
    "gracheck.experiments": 3,
    "gracheck.claims": 4,
    "gracheck.report": 5,
    "gracheck.testing": 5,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    p = ROOT.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _package_of(mod: str, path: Path) -> str:
    return mod if path.name == "__init__.py" else mod.rpartition(".")[0]


def _layer(name: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def _imports(path: Path):
    """(line, imported module, imported name or None) for every gracheck import in ``path`` (any depth)."""
    mod = _module_name(path)
    pkg = _package_of(mod, path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "gracheck" or a.name.startswith("gracheck."):
                    yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if not (src == "gracheck" or src.startswith("gracheck.")):
                continue
            for a in node.names:
                sub = f"{src}.{a.name}"
                if _is_module(sub):
                    yield node.lineno, sub, None  # ``from pkg import submodule``
                else:
                    yield node.lineno, src, a.name


def _package_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_module_of_other_package(target: str, importer_pkg: str) -> bool:
    parts = target.split(".")
    for i, p in enumerate(parts):
        if _private(p):
            owner = ".".join(parts[:i])
            return not (importer_pkg == owner or importer_pkg.startswith(owner + "."))
    return False


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in _package_modules() if _layer(_module_name(p)) is None]
    assert not missing, f"modules no layer claims (add them to LAYERS and to the README): {missing}"


@pytest.mark.parametrize("path", _package_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_down_and_keep_private_names_private(path):
    mod = _module_name(path)
    pkg = _package_of(mod, path)
    own = _layer(mod)
    problems = []
    for line, target, name in _imports(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        if target == "gracheck" and mod != "gracheck":
            problems.append(f"{where}: imports the package face `gracheck` ({name or 'import gracheck'}); "
                            "import from the defining module")
            continue
        layer = _layer(target)
        if layer is not None and own is not None and layer > own:
            problems.append(f"{where}: layer {own} module {mod} imports {target} from layer {layer} (upward)")
        if name is not None and _private(name) and target != mod:
            problems.append(f"{where}: imports the private name {name!r} from {target}")
        if _private_module_of_other_package(target, pkg):
            problems.append(f"{where}: imports the private module {target} of another package; use its public names")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_use_public_names_only(path):
    problems = []
    for line, target, name in _imports(path):
        if name is not None and _private(name):
            problems.append(f"{path.name}:{line}: imports the private name {name!r} from {target}")
        if _private_module_of_other_package(target, "benchmarks"):
            problems.append(f"{path.name}:{line}: imports the private module {target}")
    assert not problems, "\n".join(problems)


def _check_source(tmp_path: Path, rel: str, source: str) -> list[str]:
    """Run the import rules on one synthetic module placed at ``gracheck/<rel>`` (for the self-test)."""
    global ROOT, PKG
    root, pkg = ROOT, PKG
    fake = tmp_path / "gracheck" / rel
    fake.parent.mkdir(parents=True, exist_ok=True)
    for d in [fake.parent, *fake.parent.parents]:
        if d == tmp_path:
            break
        (d / "__init__.py").touch()
    fake.write_text(source)
    for name in ("experiments/_common.py", "experiments/fig1_rotation.py", "report/_run.py", "claims/__init__.py"):
        f = tmp_path / "gracheck" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
        (f.parent / "__init__.py").touch()
    ROOT, PKG = tmp_path, tmp_path / "gracheck"
    try:
        test_imports_flow_down_and_keep_private_names_private(fake)
        return []
    except AssertionError as e:
        return str(e).splitlines()
    finally:
        ROOT, PKG = root, pkg


@pytest.mark.parametrize(
    "rel, source, complaint",
    [
        ("base/x.py", "def f():\n    from gracheck.claims import registry\n", "upward"),  # a function-local import
        ("nets.py", "from gracheck.experiments import fig1_rotation\n", "upward"),
        ("experiments/y.py", "from gracheck.report._run import thing\n", "upward"),
        ("theory/z.py", "from gracheck.experiments.fig1_rotation import _helper\n", "private name"),
        ("report/w.py", "from gracheck.experiments._common import SCALES\n", "private module"),
        ("data/v.py", "import gracheck\n", "package face"),
    ],
)
def test_the_rules_catch_what_they_are_for(tmp_path, rel, source, complaint):
    """Self-test: each rule fails on a synthetic module that breaks it (and a clean one passes)."""
    problems = _check_source(tmp_path, rel, source)
    assert any(complaint in p for p in problems), problems
    assert _check_source(tmp_path, "experiments/ok.py", "from gracheck.experiments import _common\n"
                                                         "from gracheck.base.stats import bootstrap_ci\n") == []
