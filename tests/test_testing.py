"""``gracheck.testing``: ``assert_claim`` and the pytest plugin, used the way another project would use them.

* loading the plugin (and ``import gracheck``) imports neither torch nor the claim registry;
* ``assert_claim`` returns the evidence on a pass and raises an ``AssertionError`` naming the claim, its statement
  hash, the method, the worst error and the tolerance on a failure; bad arguments get the usual errors, and a check
  that cannot run is a pytest skip, never a pass;
* the README's example (``my_grae.py`` and ``test_my_grae.py``, read from the README itself) runs from a temporary
  folder outside the repository in a fresh pytest process: as written it passes; with ``beta * logdet`` in place of
  ``beta / 2 * logdet`` it fails with the message the README shows;
* the ``pytest11`` entry point declared in pyproject.toml loads the plugin without ``-p`` (through a dist-info
  folder that declares exactly that entry point, so the test needs no install).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(*extra_paths: Path) -> dict[str, str]:
    paths = [str(p) for p in extra_paths] + [str(ROOT)]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = os.pathsep.join(paths + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return env


def _plugin_installed() -> bool:
    return any(ep.name == "gracheck" and ep.value == "gracheck.testing"
               for ep in importlib.metadata.entry_points(group="pytest11"))


def _pytest(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    plugin = [] if _plugin_installed() else ["-p", "gracheck.testing"]  # installed: the entry point loads it already
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, *args], cwd=str(cwd),
                          env=env or _env(), capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- import-light


def test_loading_the_plugin_and_the_package_imports_no_torch():
    code = ("import sys, gracheck, gracheck.testing; "
            "print([m for m in ('torch', 'numpy', 'sympy', 'gracheck.claims', 'gracheck.objectives', 'pytest') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_pytest_run_with_the_plugin_loaded_does_not_import_torch(tmp_path):
    (tmp_path / "test_light.py").write_text(
        "import sys\n\ndef test_light():\n    assert 'torch' not in sys.modules and 'gracheck.claims' not in sys.modules\n")
    out = _pytest(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "gracheck claims checked" not in out.stdout  # nothing to report when no claim was checked


def test_package_face_lists_each_name_once_and_lazily():
    import gracheck

    tree = ast.parse((ROOT / "gracheck" / "__init__.py").read_text(encoding="utf-8"))
    typed = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "gracheck.base.version" and node.module.startswith("gracheck."):
            typed.update({a.name: node.module for a in node.names})
    assert typed == gracheck._EXPORTS, "the TYPE_CHECKING imports and _EXPORTS disagree"
    assert sorted(gracheck.__all__) == sorted(["__version__", *gracheck._EXPORTS])
    for name, module in gracheck._EXPORTS.items():
        assert getattr(gracheck, name).__module__ == module, name
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        gracheck.no_such_name  # noqa: B018


# ---------------------------------------------------------------- assert_claim in process


def test_assert_claim_passes_and_returns_the_evidence():
    from gracheck.testing import assert_claim

    ev = assert_claim("eq9-optimal-covariance", method="symbolic")
    assert ev and all(r.passed for r in ev)
    ev = assert_claim("eq9-optimal-covariance", candidate=lambda H, b: __import__("torch").linalg.inv(
        __import__("torch").eye(H.shape[-1], dtype=H.dtype) - H / b), method="property", seed=3)
    assert all(r.seed == 3 for r in ev)


def test_assert_claim_failure_names_claim_method_error_and_tolerance():
    import torch

    from gracheck.base.evidence import ClaimFailed
    from gracheck.claims import get
    from gracheck.testing import assert_claim

    def sigma_without_inverse(H, beta):
        return torch.eye(H.shape[-1], dtype=H.dtype) - H / beta

    with pytest.raises(AssertionError) as e:
        assert_claim("eq9-optimal-covariance", candidate=sigma_without_inverse, method="property")
    assert isinstance(e.value, ClaimFailed)
    msg = str(e.value)
    c = get("eq9-optimal-covariance")
    assert f"claim eq9-optimal-covariance, statement {c.statement_hash}" in msg
    assert "sigma_without_inverse" in msg and "method 'property'" in msg
    assert re.search(r"worst abs_err=[0-9.e+-]+", msg) and re.search(r"up to atol=[0-9.e+-]+, rtol=[0-9.e+-]+ allowed", msg)


def test_assert_claim_bad_arguments():
    from gracheck.testing import assert_claim

    with pytest.raises(KeyError, match="did you mean"):
        assert_claim("eq13-gaussian-grea")
    with pytest.raises(ValueError, match="does not take a candidate"):
        assert_claim("eq10-optimal-value", candidate=lambda *a: 0)
    with pytest.raises(TypeError, match="candidate: expected a callable"):
        assert_claim("eq13-gaussian-grae", candidate="my_grae")
    with pytest.raises(ValueError, match="has no 'empirical' check"):
        assert_claim("eq13-gaussian-grae", method="empirical")
    with pytest.raises(TypeError, match="claim_id"):
        assert_claim(13)


def test_a_check_that_cannot_run_is_a_skip_not_a_pass():
    from gracheck.base.evidence import CheckSkipped, claim
    from gracheck.claims import register, unregister
    from gracheck.testing import assert_claim

    c = register(claim("test-testing-skip", source="Eq. T", statement="A check whose data is absent here.", kind="empirical"))

    @c.method("empirical")
    def _(*, seed, candidate, **kw):
        raise CheckSkipped("the data file is absent")

    try:
        with pytest.raises(pytest.skip.Exception, match="the data file is absent"):
            assert_claim("test-testing-skip")
    finally:
        unregister("test-testing-skip")


# ---------------------------------------------------------------- the README example, outside the repository


def _readme_files() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    files = {}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        first, _, rest = block.partition("\n")
        m = re.fullmatch(r"# file: (\S+)", first.strip())
        if m:
            files[m.group(1)] = rest
    assert set(files) == {"my_grae.py", "test_my_grae.py"}, f"README example files: {sorted(files)}"
    return files


@pytest.mark.slow
def test_readme_example_runs_from_outside_the_repository(tmp_path):
    files = _readme_files()
    assert ROOT not in tmp_path.parents and tmp_path != ROOT
    for name, body in files.items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    out = _pytest(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout
    from gracheck.claims import get

    h = get("eq13-gaussian-grae").statement_hash
    assert f"claim eq13-gaussian-grae, statement {h}: passed (my_grae.my_grae, all methods, seed 0)" in out.stdout
    assert f"claim eq13-gaussian-grae, statement {h}: passed (my_grae.my_grae, closed-form, seed 0)" in out.stdout

    wrong = files["my_grae.py"].replace("beta / 2 * torch.logdet(A)", "beta * torch.logdet(A)")
    assert wrong != files["my_grae.py"], "the README's my_grae no longer contains the line this test mutates"
    (tmp_path / "my_grae.py").write_text(wrong, encoding="utf-8")
    out = _pytest(tmp_path, "-k", "is_eq13")
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert f"ClaimFailed: gracheck" in text and f"claim eq13-gaussian-grae, statement {h}: candidate my_grae.my_grae failed" in text
    assert re.search(r"claim eq13-gaussian-grae \(Eq\. 13\) failed by method '(symbolic|autograd|closed-form)': worst "
                     r"abs_err=[0-9.e+-]+, rel_err=[0-9.e+-]+ \(up to atol=[0-9.e+-]+, rtol=[0-9.e+-]+ allowed\)", text), text
    assert "the regulariser −β/2 log|I + JᵀJ/β| enters twice (e.g. β in place of β/2)" in text
    assert f"claim eq13-gaussian-grae, statement {h}: FAILED (my_grae.my_grae, all methods, seed 0)" in text


# ---------------------------------------------------------------- the entry point


def _declared_entry_point() -> str:
    import tomllib

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["entry-points"]["pytest11"]
    assert eps == {"gracheck": "gracheck.testing"}, eps
    return "[pytest11]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())


@pytest.mark.slow
def test_pytest11_entry_point_loads_the_plugin_without_p(tmp_path):
    """A dist-info folder declaring pyproject.toml's pytest11 entry point (what ``pip install`` writes) on the path:
    pytest then loads the plugin by itself; the fixture works and the summary is printed."""
    site = tmp_path / "site"
    dist = site / "gracheck_entry_point_probe-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gracheck-entry-point-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(_declared_entry_point())
    work = tmp_path / "work"
    work.mkdir()
    (work / "test_fixture.py").write_text(
        "def test_fixture(assert_claim):\n    assert assert_claim('eq9-optimal-covariance', method='symbolic')\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=str(work), env=_env(site),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "gracheck claims checked" in out.stdout and "claim eq9-optimal-covariance, statement" in out.stdout
    probe = subprocess.run([sys.executable, "-c", "import importlib.metadata as m, json; print(json.dumps("
                            "[e.value for e in m.entry_points(group='pytest11') if e.name == 'gracheck']))"],
                           env=_env(site), capture_output=True, text=True, timeout=60, check=True)
    assert "gracheck.testing" in json.loads(probe.stdout)
