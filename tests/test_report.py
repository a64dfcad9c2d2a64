"""Tests of ``gracheck.report``: statuses, exit codes, the JSON schema, self-contained HTML, paper-scale results.

The claims used here are fakes registered for the test (ids ``test-fake-*``) so the
tests do not depend on the real claims' timing; one test runs the real
``eq9-optimal-covariance`` when it is registered.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest

from gracheck import claims as _registry
from gracheck.base import verdicts
from gracheck.base.evidence import CheckSkipped, claim, compare, decided, result
from gracheck.experiments import _common
from gracheck.report import build_report, main, schema_path
from gracheck.report._run import worst_error

FAKE_EXP_MODULE = "gracheck_test_fake_experiment"


# ----------------------------------------------------------------------------- fakes


@dataclasses.dataclass(frozen=True)
class _FakeConfig:
    n: int = 3


def _fake_run(config, *, seed, device, out_dir, progress=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0.0, 0.5, 0.25], label="angle")
    ax.set_xlabel("iterations (thousands)")
    ax.set_ylabel("angle (degrees)")
    ax.legend()
    fig.tight_layout()
    path = Path(out_dir) / "test-fake-experiment-curve.png"
    fig.savefig(path)
    plt.close(fig)
    if progress:
        progress("fake training done")
    return _common.ExperimentResult(
        claim_id="test-fake-experiment",
        scale="smoke" if config.n == 3 else "paper",
        config=_common.config_dict(config),
        seeds=[seed, seed + 1],
        device=device,
        metrics={
            "angle_deg": _common.Metric(value=1.25, ci_low=0.5, ci_high=2.0, n=config.n, unit="degrees"),
            "gap_nats": _common.Metric(value=float("nan"), note="undefined on purpose"),
        },
        figures=[str(path)],
        seconds=0.01,
    )


def _fake_check(res):
    m = res.metrics["angle_deg"]
    return [
        result(
            "test-fake-experiment",
            "empirical",
            passed=m.ci_high < 5.0,
            measured=m.ci_high,
            expected=5.0,
            abs_err=None,
            detail="upper CI of the angle below 5 degrees",
        )
    ]


def _fake_experiment_module() -> types.ModuleType:
    mod = types.ModuleType(FAKE_EXP_MODULE)
    mod.CLAIM = _common.experiment_claim(FAKE_EXP_MODULE, id="test-fake-experiment", source="Fig. T3",
                                         statement="A fake experiment with a figure.", title="Fake figure T3",
                                         shows="A curve of the fake experiment.")
    mod.CLAIM_ID = mod.CLAIM.id
    mod.Config = _FakeConfig
    mod.CONFIGS = {"smoke": _FakeConfig(3), "paper": _FakeConfig(40)}
    mod.run = _fake_run
    mod.check = _fake_check
    return mod


def _square_reference(x):
    return x * x


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    """Register fake claims (and a fake experiment module) for one test; remove them afterwards."""
    monkeypatch.setenv("GRACHECK_CACHE", str(tmp_path / "cache"))
    _registry.registry()  # import the real families first so the fakes do not shadow them
    made = []

    def reg(cid, **kw):
        c = _registry.register(claim(cid, **kw))
        made.append(cid)
        return c

    c = reg("test-fake-pass", source="Eq. T1", statement="1 + 1 = 2.", kind="derivation")

    @c.method("symbolic")
    def _(*, seed, candidate):
        return compare("test-fake-pass", "symbolic", 2.0, 2.0 + 1e-14, atol=1e-10, rtol=0.0,
                       detail="1+1 vs 2", seed=seed)

    @c.method("autograd")
    def _(*, seed, candidate):
        return compare("test-fake-pass", "autograd", [1.0, 2.0], [1.0, 2.0 + 2e-12], atol=1e-10, rtol=1e-9,
                       detail="two routes", seed=seed)

    c = reg("test-fake-fail", source="Eq. T2", statement="1 + 1 = 3.", kind="derivation")

    @c.method("autograd")
    def _(*, seed, candidate):
        return compare("test-fake-fail", "autograd", 2.0, 3.0, atol=1e-10, rtol=1e-9, detail="1+1 vs 3", seed=seed)

    c = reg("test-fake-erratum", source="Sec. T", kind="erratum", statement="As printed: 2 + 2 = 5.",
            corrected="2 + 2 = 4.")

    @c.method("symbolic")
    def _(*, seed, candidate):
        return result("test-fake-erratum", "symbolic", passed=True, measured=4, expected=5, abs_err=1.0,
                      detail="counterexample: 2 + 2 evaluates to 4, not 5; the corrected 4 holds exactly",
                      seed=seed)

    c = reg("test-fake-skip", source="Fig. T", statement="Needs data that is absent.", kind="empirical")

    @c.method("empirical")
    def _(*, seed, candidate, **kw):
        raise CheckSkipped("the data file is absent here")

    c = reg("test-fake-error", source="Eq. T3", statement="Its check crashes.", kind="derivation")

    @c.method("autograd")
    def _(*, seed, candidate):
        raise RuntimeError("boom in the check")

    c = reg("test-fake-candidate", source="Eq. T4", statement="square(x) = x².", kind="derivation",
            takes_candidate=True, candidate_signature="candidate(x) -> x²")

    @c.method("autograd")
    def _(*, seed, candidate):
        f = candidate or _square_reference
        xs = [0.5, 1.5, 3.0]
        return compare("test-fake-candidate", "autograd", [f(x) for x in xs], [x**2 for x in xs], atol=1e-12,
                       rtol=1e-12, detail="candidate vs x**2", seed=seed)

    c = reg("test-fake-partial", source="Eq. T5", statement="One method passes, one cannot run.",
            kind="derivation")

    @c.method("symbolic")
    def _(*, seed, candidate):
        return compare("test-fake-partial", "symbolic", 1.0, 1.0, atol=1e-12, rtol=0.0, detail="ok", seed=seed)

    @c.method("property")
    def _(*, seed, candidate):
        raise CheckSkipped("hypothesis profile unavailable")

    reg("test-fake-unimplemented", source="Eq. T6", statement="No check yet.", kind="derivation",
        methods=("symbolic",))

    c = reg("test-fake-refuted", source="Fig. T2", statement="A trend that does not hold here.", kind="empirical")

    @c.method("empirical")
    def _(*, seed, candidate, scale, device, out_dir, **kw):
        return result("test-fake-refuted", "empirical", passed=False, measured=0.8, expected=0.5, abs_err=0.3,
                      atol=0.1, detail=f"slope 0.8 above 0.5 at {scale} scale", seed=seed)

    c = reg("test-fake-inconclusive", source="Fig. T4", statement="A trend whose CI straddles zero here.",
            kind="empirical")

    @c.method("empirical")
    def _(*, seed, candidate, **kw):
        tight = result("test-fake-inconclusive", "empirical", passed=True, measured=1.0, expected=1.0, abs_err=2e-13,
                       atol=1e-8, detail="an algebra identity that holds to 2e-13", seed=seed, outcome="verified",
                       reason="identity: value 2e-13 ≤ 1e-08, on the claimed side")
        d = verdicts.one_sided((-0.028, 0.054), 0.0, claimed="above", what="slope of the gap vs β")
        trend = decided("test-fake-inconclusive", d, measured={"slope": 0.013, "ci": [-0.028, 0.054]},
                        expected="CI entirely > 0", abs_err=-0.028, atol=0.0, sense="exceeds", seed=seed,
                        detail="slope 0.013 (95% CI -0.028 to 0.054)", note="About 4,000 points would decide it.")
        return [tight, trend]

    fake = _fake_experiment_module()
    monkeypatch.setitem(sys.modules, FAKE_EXP_MODULE, fake)
    _registry.register(fake.CLAIM)
    made.append(fake.CLAIM.id)

    yield made
    for cid in made:
        _registry.unregister(cid)


def _validate(path: Path) -> dict:
    schema = json.loads(schema_path().read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = json.loads(path.read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    return doc


def _by_id(doc):
    return {c["id"]: c for c in doc["claims"]}


# ----------------------------------------------------------------------------- statuses and exit codes


def test_passing_selection_validates_and_exits_0(fakes, tmp_path):
    res = build_report(tmp_path / "rep", only=["test-fake-pass", "test-fake-erratum", "test-fake-skip"],
                       device="cpu", results_dir=None)
    assert res.exit_code == 0
    doc = _validate(res.results_path)
    c = _by_id(doc)
    assert c["test-fake-pass"]["status"] == "verified"
    assert c["test-fake-erratum"]["status"] == "erratum-confirmed"
    assert c["test-fake-skip"]["status"] == "skipped"
    assert "absent" in c["test-fake-skip"]["reason"]
    assert doc["counts"] == {"verified": 1, "erratum-confirmed": 1, "refuted": 0, "inconclusive": 0, "failed": 0,
                             "skipped": 1}
    assert doc["scale"] == "smoke" and doc["seed"] == 0
    for key in ("python", "torch", "numpy", "scipy", "sympy", "device_name", "threads", "git_commit"):
        assert key in doc["environment"]
    # The worst error is the autograd check (2e-12 against 1e-10 + 1e-9·2).
    assert c["test-fake-pass"]["worst"]["method"] == "autograd"
    assert c["test-fake-pass"]["citation"] == (
        "gracheck 0.1.0, claim test-fake-pass, verified (symbolic, autograd)"
    )


def test_failing_derivation_exits_1(fakes, tmp_path):
    res = build_report(tmp_path / "rep", only=["test-fake-pass", "test-fake-fail"], device="cpu", results_dir=None)
    assert res.exit_code == 1
    doc = _validate(res.results_path)
    bad = _by_id(doc)["test-fake-fail"]
    assert bad["status"] == "failed" and not bad["errored"]
    assert "up to atol=1e-10" in bad["reason"]
    md = res.markdown_path.read_text()
    assert "## Failures" in md and "test-fake-fail" in md.split("## Summary")[0]


def test_erroring_check_is_failed_with_traceback_and_exit_3(fakes, tmp_path):
    """A check that raises is an internal error: exit code 3, not 1 (which means "a claim failed")."""
    res = build_report(tmp_path / "rep", only=["test-fake-error"], device="cpu", results_dir=None)
    assert res.exit_code == 3
    c = _by_id(_validate(res.results_path))["test-fake-error"]
    assert c["status"] == "failed" and c["errored"]
    assert "RuntimeError: boom in the check" in c["reason"] and "test_report.py" in c["reason"]


def test_wrong_candidate_fails_and_right_one_passes(fakes, tmp_path):
    good = build_report(tmp_path / "a", only=["test-fake-candidate"], device="cpu", results_dir=None,
                        candidates={"test-fake-candidate": lambda x: x * x})
    assert good.exit_code == 0 and good.claims[0]["status"] == "verified"
    bad = build_report(tmp_path / "b", only=["test-fake-candidate"], device="cpu", results_dir=None,
                       candidates={"test-fake-candidate": lambda x: x * x + 1e-3})
    assert bad.exit_code == 1 and bad.claims[0]["status"] == "failed"
    doc = _validate(bad.results_path)
    c = _by_id(doc)["test-fake-candidate"]
    assert c["candidate"] and "candidate under test" in c["citation"]
    assert "Candidate implementations under test" in bad.markdown_path.read_text()
    assert "Candidate implementations under test" in bad.html_path.read_text()


def test_candidate_for_a_claim_without_one_is_usage_error(fakes, tmp_path):
    from gracheck.report import UsageError

    with pytest.raises(UsageError, match="candidates: claim 'test-fake-pass' does not take"):
        build_report(tmp_path / "rep", only=["test-fake-pass"], device="cpu",
                     candidates={"test-fake-pass": lambda x: x})
    with pytest.raises(UsageError, match="not among the selected"):
        build_report(tmp_path / "rep", only=["test-fake-pass"], device="cpu",
                     candidates={"test-fake-candidate": lambda x: x})


def test_skipped_is_never_counted_as_verified(fakes, tmp_path):
    ids = ["test-fake-skip", "test-fake-partial", "test-fake-unimplemented"]
    res = build_report(tmp_path / "rep", only=ids, device="cpu", results_dir=None)
    doc = _validate(res.results_path)
    c = _by_id(doc)
    assert {c[i]["status"] for i in ids} == {"skipped"}
    assert doc["counts"]["verified"] == 0 and doc["counts"]["skipped"] == 3
    # The partial claim keeps the evidence of the method that ran, and says which one was skipped.
    assert len(c["test-fake-partial"]["results"]) == 1
    assert "property: hypothesis profile unavailable" in c["test-fake-partial"]["reason"]
    assert "no check implemented yet" in c["test-fake-unimplemented"]["reason"]
    assert res.exit_code == 0  # skips are allowed, and shown
    md = res.markdown_path.read_text()
    assert "NOT verified" in md and "## Not run here" in md
    # A doctored document calling a skipped claim "verified" is rejected by the schema.
    schema = json.loads(schema_path().read_text())
    for i in range(3):
        bad = json.loads(res.results_path.read_text())
        bad["claims"][i]["status"] = "verified"
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)


def test_refuted_empirical_is_a_finding_not_an_error_unless_strict(fakes, tmp_path):
    res = build_report(tmp_path / "a", only=["test-fake-pass", "test-fake-refuted"], device="cpu", results_dir=None)
    assert res.exit_code == 0
    c = _by_id(_validate(res.results_path))["test-fake-refuted"]
    assert c["status"] == "refuted" and c["scale"] == "smoke"
    md = res.markdown_path.read_text()
    head = md.split("## Summary")[0]
    assert "Findings: empirical claims refuted here" in head and "slope 0.8 above 0.5" in head
    strict = build_report(tmp_path / "b", only=["test-fake-refuted"], device="cpu", results_dir=None, strict=True)
    assert strict.exit_code == 1


def test_experiment_section_with_numbers_figures_and_progress(fakes, tmp_path):
    lines: list[str] = []
    res = build_report(tmp_path / "rep", only=["test-fake-experiment"], device="cpu", results_dir=None,
                       quiet=False, progress=lines.append)
    assert res.exit_code == 0
    doc = _validate(res.results_path)
    assert _by_id(doc)["test-fake-experiment"]["status"] == "verified"
    (e,) = doc["experiments"]
    assert e["run"] and e["seeds"] == [0, 1] and e["scale"] == "smoke"
    assert e["metrics"]["angle_deg"]["ci_low"] == 0.5
    assert e["metrics"]["gap_nats"]["value"] == "nan"  # strict JSON: non-finite numbers as strings
    assert e["figures"] == ["figures/test-fake-experiment-curve.png"]
    assert (tmp_path / "rep" / e["figures"][0]).is_file()
    assert e["paper_scale"] is None
    md = res.markdown_path.read_text()
    assert "[0.5, 2] (95% CI)" in md and "Not run at paper scale here" in md
    assert "![test-fake-experiment" in md
    assert any(re.match(r"\[1/1\] test-fake-experiment \.\.\. verified \(\d+\.\d s, total \d+\.\d s\)", s)
               for s in lines), lines
    assert any("fake training done" in s for s in lines)
    # Second run hits the experiment cache.
    res2 = build_report(tmp_path / "rep2", only=["test-fake-experiment"], device="cpu", results_dir=None)
    e2 = json.loads(res2.results_path.read_text())["experiments"][0]
    assert any("loaded from cache" in n for n in e2["notes"])


def test_crashing_experiment_is_failed_and_exits_3(fakes, tmp_path, monkeypatch):
    def crash(config, **kw):
        raise FloatingPointError("loss became NaN at step 3")

    monkeypatch.setattr(sys.modules[FAKE_EXP_MODULE], "run", crash)
    res = build_report(tmp_path / "rep", only=["test-fake-experiment"], device="cpu", results_dir=None)
    assert res.exit_code == 3
    doc = _validate(res.results_path)
    c = _by_id(doc)["test-fake-experiment"]
    assert c["status"] == "failed" and c["errored"] and "loss became NaN" in c["reason"]
    assert not doc["experiments"][0]["run"] and "loss became NaN" in doc["experiments"][0]["reason"]


def test_terminal_progress_overwrites_the_running_line():
    import io

    from gracheck.report._run import _TerminalSink

    buf = io.StringIO()
    sink = _TerminalSink(buf, live=True)
    sink.begin("[1/2] a ... running symbolic")
    sink("[1/2] a ... verified (0.1 s, total 0.1 s)")
    sink("[2/2] b ... skipped (0.0 s, total 0.1 s)")
    assert buf.getvalue() == (
        "[1/2] a ... running symbolic\r\033[K[1/2] a ... verified (0.1 s, total 0.1 s)\n"
        "[2/2] b ... skipped (0.0 s, total 0.1 s)\n"
    )


def test_paper_scale_results_are_shown_beside_smoke(fakes, tmp_path):
    rdir = tmp_path / "results"
    rdir.mkdir()
    paper = _fake_run(_FakeConfig(40), seed=0, device="cuda", out_dir=rdir)
    d = paper.to_dict()
    d["figures"] = ["test-fake-experiment-curve.png"]  # relative to results/
    d["metrics"]["gap_nats"]["value"] = "nan"
    d["provenance"] = {"date": "2026-01-02", "device": "NVIDIA H200", "git_commit": "abc123"}
    (rdir / "test-fake-experiment-paper.json").write_text(json.dumps(d))
    res = build_report(tmp_path / "rep", only=["test-fake-experiment"], device="cpu", results_dir=rdir)
    doc = _validate(res.results_path)
    p = doc["experiments"][0]["paper_scale"]
    assert p["label"] == "paper scale (GPU run committed in results/, 2026-01-02, NVIDIA H200)"
    assert p["verdict"] == "verified" and p["scale"] == "paper"
    assert p["figures"] == ["figures/paper-test-fake-experiment-curve.png"]
    md = res.markdown_path.read_text()
    assert "paper scale (GPU run committed in results/, 2026-01-02, NVIDIA H200)" in md
    assert "Paper-scale results committed in results/ are shown beside ours for: test-fake-experiment" in md
    # An unreadable file is reported, not hidden and not fatal.
    (rdir / "test-fake-experiment-paper.json").write_text("{not json")
    res = build_report(tmp_path / "rep2", only=["test-fake-experiment"], device="cpu", results_dir=rdir)
    p = _validate(res.results_path)["experiments"][0]["paper_scale"]
    assert "could not read" in p["error"]
    assert "unreadable" in res.markdown_path.read_text()


# ----------------------------------------------------------------------------- HTML


class _Resources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.loads: list[tuple[str, str, str]] = []  # (tag, attr, value) that would load something
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for k, v in attrs:
            if k in ("src", "srcset", "data", "poster", "background") or (k == "href" and tag != "a"):
                self.loads.append((tag, k, v or ""))
            if k == "href" and tag == "a":
                assert v and (v.startswith("#") or v.startswith("https://arxiv.org/")), v
            if k == "style":
                assert "url(" not in (v or "")


def test_html_is_self_contained(fakes, tmp_path):
    res = build_report(tmp_path / "rep", only=["test-fake-pass", "test-fake-fail", "test-fake-erratum",
                                               "test-fake-skip", "test-fake-experiment"],
                       device="cpu", results_dir=None)
    text = res.html_path.read_text()
    p = _Resources()
    p.feed(text)
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    assert p.loads, "the report should embed at least the figures"
    for tag, attr, value in p.loads:
        assert tag == "img" and attr == "src" and value.startswith("data:image/"), (tag, attr, value[:60])
    assert "@import" not in text and not re.search(r"url\(\s*['\"]?(https?:)?//", text)
    # Status is shown in words, not only colour; the banner is unmistakable.
    for word in ("verified", "failed", "erratum-confirmed", "skipped"):
        assert f">{word}</span>" in text
    assert "Scale: smoke (cpu:" in text and "not the paper&#x27;s numbers" in text
    # Errata section: printed statement, corrected statement and counterexample.
    errata = text.split('id="errata"')[1].split('id="figures"')[0]
    assert "2 + 2 = 5" in errata and "2 + 2 = 4." in errata and "counterexample: 2 + 2 evaluates" in errata
    # Every paper figure has its section, with the reason when it did not run.
    for cid in (c.id for c in _registry.registry() if c.kind == "empirical" and c.figure is not None):
        if cid != "test-fake-experiment":
            assert f'id="fig-{cid}"' in text
    assert "not run here: not selected (--only)" in text


def test_markdown_has_citation_lines_and_environment(fakes, tmp_path):
    res = build_report(tmp_path / "rep", only=["test-fake-pass", "test-fake-refuted"], device="cpu",
                       results_dir=None, seed=3)
    md = res.markdown_path.read_text()
    assert "gracheck 0.1.0, claim test-fake-pass, verified (symbolic, autograd)" in md
    assert "gracheck 0.1.0, claim test-fake-refuted, refuted at smoke scale, seed 3 (empirical)" in md
    assert "## Environment" in md and "| torch |" in md
    assert "**Scale: smoke (cpu:" in md.splitlines()[2]


# ----------------------------------------------------------------------------- CLI


def test_cli_exit_codes_and_summary(fakes, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["--out", str(out), "--only", "test-fake-pass", "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "1 claim: 1 verified, 0 erratum-confirmed, 0 refuted, 0 inconclusive, 0 failed, 0 skipped" in printed
    assert str(out / "report.html") in printed
    assert main(["--out", str(out), "--only", "test-fake-fail", "--device", "cpu"]) == 1
    assert main(["--out", str(out), "--only", "test-fake-pas"]) == 2
    err = capsys.readouterr().err
    assert "--only: no claim 'test-fake-pas'" in err and "test-fake-pass" in err
    with pytest.raises(SystemExit) as ex:
        main(["--scale", "huge"])
    assert ex.value.code == 2
    assert "--scale" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:
        main(["--seed", "x"])
    assert ex.value.code == 2
    assert main(["--out", str(out), "--only", "test-fake-pass", "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["--out", str(tmp_path / "afile"), "--only", "test-fake-pass", "--device", "cpu"]) == 2
    assert "--out" in capsys.readouterr().err


_CLAIM_LINE = r"\[(\d+)/(\d+)\] (\S+) \.\.\. (verified|erratum-confirmed|refuted|inconclusive|failed|skipped) " \
              r"\(\d+\.\d s, total \d+\.\d s\)"


def test_cli_progress_on_a_pipe_one_line_per_claim(tmp_path):
    """Issue 18 item 5: with stderr not a terminal (CI logs, pipes, nohup) the report printed nothing for
    minutes. Now each claim gets one flushed line as it finishes (index, id, status, seconds), with no
    terminal control characters; --quiet prints none."""
    ids = ["erratum-sec7-fid-beta-qualifier", "sec5.1-observation-hessians"]
    known = {c.id for c in _registry.registry()}
    if not set(ids) <= known:
        pytest.skip(f"{ids} are not registered")
    env = {**__import__("os").environ, "GRACHECK_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "gracheck.report", "--out", str(tmp_path / "r"), "--only", *ids,
                           "--device", "cpu"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\033" not in proc.stderr
    lines = proc.stderr.splitlines()
    got = [re.fullmatch(_CLAIM_LINE, ln) for ln in lines]
    assert all(got) and len(got) == 2, lines
    order = [c.id for c in _registry.registry() if c.id in ids]  # the report runs claims in registry order
    status = {"erratum-sec7-fid-beta-qualifier": "erratum-confirmed", "sec5.1-observation-hessians": "verified"}
    assert [(m.group(1), m.group(2), m.group(3), m.group(4)) for m in got] == [
        (str(i), "2", cid, status[cid]) for i, cid in enumerate(order, 1)]
    assert "2 claims: 1 verified, 1 erratum-confirmed" in proc.stdout


def test_cli_progress_off_a_terminal_and_quiet(fakes, tmp_path, capsys):
    """In-process (capsys' stderr is not a terminal): one line per claim as it finishes, the experiment's own
    lines in between (what it is training), none of the live display's carriage returns; --quiet: nothing."""
    args = ["--only", "test-fake-pass", "test-fake-experiment", "--device", "cpu"]
    assert main(["--out", str(tmp_path / "a"), *args]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\033" not in err
    lines = err.splitlines()
    assert re.fullmatch(_CLAIM_LINE, lines[0]) and lines[0].startswith("[1/2] test-fake-pass ... verified")
    assert lines[1] == "[2/2] test-fake-experiment ... running its experiment at smoke scale on cpu"
    assert re.fullmatch(r" +\d+\.\d s  fake training done", lines[2]), lines
    assert re.fullmatch(_CLAIM_LINE, lines[3]) and lines[3].startswith("[2/2] test-fake-experiment ... verified")
    assert len(lines) == 4
    assert main(["--out", str(tmp_path / "b"), *args, "--quiet", "--no-cache"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and "2 claims: 2 verified" in cap.out


def test_python_m_entry_point_bad_usage(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gracheck.report", "--out", str(tmp_path / "r"), "--only",
                           "no-such-claim"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--only: no claim 'no-such-claim'" in proc.stderr


def test_worst_error_rule_matches_compare():
    rows = [
        {"method": "a", "passed": True, "abs_err": 1e-12, "rel_err": 1e-12, "atol": 1e-10, "rtol": 0.0,
         "expected": 1.0},
        {"method": "b", "passed": True, "abs_err": 5e-10, "rel_err": 5e-11, "atol": 1e-10, "rtol": 1e-9,
         "expected": 10.0},
        {"method": "c", "passed": True, "abs_err": None, "rel_err": None, "atol": None, "rtol": None,
         "expected": 1.0},
    ]
    w = worst_error(rows)
    assert w["method"] == "b" and w["ratio"] == pytest.approx(5e-10 / (1e-10 + 1e-8))
    assert worst_error([rows[2]]) is None


# ----------------------------------------------------------------------------- the real claims


def test_real_eq9_claim(tmp_path):
    ids = {c.id for c in _registry.registry()}
    if "eq9-optimal-covariance" not in ids:
        pytest.skip("eq9-optimal-covariance is not registered yet")
    res = build_report(tmp_path / "rep", only=["eq9-optimal-covariance"], device="cpu", results_dir=None)
    doc = _validate(res.results_path)
    c = _by_id(doc)["eq9-optimal-covariance"]
    assert c["status"] == "verified", c["reason"]
    assert res.exit_code == 0
    assert c["citation"].startswith("gracheck 0.1.0, claim eq9-optimal-covariance, verified (")

    import torch

    def wrong_sign(H, beta):  # (I + H/β)⁻¹ instead of (I − H/β)⁻¹
        eye = torch.eye(H.shape[-1], dtype=H.dtype)
        return torch.linalg.inv(eye + H / beta)

    bad = build_report(tmp_path / "bad", only=["eq9-optimal-covariance"], device="cpu", results_dir=None,
                       candidates={"eq9-optimal-covariance": wrong_sign})
    assert bad.exit_code == 1
    assert bad.claims[0]["status"] == "failed" and not bad.claims[0]["errored"], bad.claims[0]["reason"]


# ----------------------------------------------------------------------------- three outcomes


def test_inconclusive_is_its_own_status_everywhere(fakes, tmp_path):
    """issue 12: status, counts, summary line, findings (separate from refuted, with the reason), legend and
    badge, the deciding check in the summary column, --strict, and the schema."""
    ids = ["test-fake-pass", "test-fake-refuted", "test-fake-inconclusive"]
    res = build_report(tmp_path / "rep", only=ids, device="cpu", results_dir=None)
    assert res.exit_code == 0  # findings, not errors
    doc = _validate(res.results_path)
    c = _by_id(doc)["test-fake-inconclusive"]
    assert c["status"] == "inconclusive" and c["scale"] == "smoke"
    assert "straddles 0" in c["reason"] and "4,000 points would decide" in c["reason"]
    assert doc["counts"]["inconclusive"] == 1 and doc["counts"]["refuted"] == 1
    assert "1 refuted, 1 inconclusive" in res.summary_line()
    # the summary column shows the check that decided the verdict, not the passing 2e-13 identity
    assert c["worst"]["kind"] == "decision" and c["worst"]["text"].startswith("inconclusive: slope of the gap")
    assert [r["outcome"] for r in c["results"]] == ["verified", "inconclusive"]
    md = res.markdown_path.read_text()
    head = md.split("## Summary")[0]
    refuted_part = head.split("## Findings: empirical claims refuted here")[1].split("## Findings")[0]
    inconclusive_part = head.split("## Findings: empirical claims inconclusive here")[1]
    assert "test-fake-refuted" in refuted_part and "test-fake-inconclusive" not in refuted_part
    assert "test-fake-inconclusive" in inconclusive_part and "straddles 0" in inconclusive_part
    assert "**inconclusive** = the experiment ran but could not decide" in md
    assert "gracheck 0.1.0, claim test-fake-inconclusive, inconclusive at smoke scale, seed 0 (empirical)" in md
    html = res.html_path.read_text()
    assert ">inconclusive</span>" in html and 'id="findings-inconclusive"' in html
    strict = build_report(tmp_path / "strict", only=["test-fake-pass", "test-fake-inconclusive"], device="cpu",
                          results_dir=None, strict=True)
    assert strict.exit_code == 1  # --strict: exit 1 unless every empirical claim that ran is verified
    assert "not verified, with --strict" in strict.markdown_path.read_text()
    ok = build_report(tmp_path / "ok", only=["test-fake-pass", "test-fake-skip"], device="cpu", results_dir=None,
                      strict=True)
    assert ok.exit_code == 0  # a skipped empirical claim did not run: --strict does not count it


def test_schema_rejects_an_inconclusive_derivation_or_one_without_reason(fakes, tmp_path):
    res = build_report(tmp_path / "rep", only=["test-fake-pass", "test-fake-inconclusive"], device="cpu",
                       results_dir=None)
    schema = json.loads(schema_path().read_text())
    good = json.loads(res.results_path.read_text())
    jsonschema.validate(good, schema, cls=jsonschema.Draft202012Validator)
    for doctor in (lambda d: d["claims"][0].update(status="inconclusive"),       # a derivation cannot be
                   lambda d: d["claims"][1].update(reason=""),                   # no reason given
                   lambda d: d["claims"][1]["results"][1].update(passed=True),   # passed contradicts outcome
                   lambda d: d["claims"][1]["results"][1].update(outcome="maybe")):
        bad = json.loads(res.results_path.read_text())
        doctor(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)


def test_cli_internal_error_and_bad_environment_exit_3(fakes, tmp_path, capsys, monkeypatch):
    """issue 17 item 7: an internal error or a bad environment has its own exit code (3), documented in --help."""
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "3: internal error or bad environment" in helptext and "--strict" in helptext
    (tmp_path / "afile").write_text("")
    code = main(["--out", str(tmp_path / "afile" / "rep"), "--only", "test-fake-pass", "--device", "cpu"])
    assert code == 3
    err = capsys.readouterr().err
    assert "--out" in err and "environment error" in err and "Traceback" not in err
    import gracheck.report._run as run

    def boom(*a, **k):
        raise RuntimeError("a bug in the report")

    monkeypatch.setattr(run, "build_report", boom)
    assert main(["--out", str(tmp_path / "rep"), "--only", "test-fake-pass"]) == 3
    assert "internal error (exit 3)" in capsys.readouterr().err


def test_paper_scale_result_is_judged_by_the_same_check(fakes, tmp_path, monkeypatch):
    """A committed paper-scale result goes through Claim.check(from_result=...): the experiment's own rules."""
    rdir = tmp_path / "results"
    rdir.mkdir()
    paper = _fake_run(_FakeConfig(40), seed=0, device="cuda", out_dir=rdir)
    d = paper.to_dict()
    d["metrics"]["angle_deg"]["ci_high"] = 7.5  # the fake rule: CI upper end below 5
    d["figures"] = []
    (rdir / "test-fake-experiment-paper.json").write_text(json.dumps(d))
    calls = []
    mod = sys.modules[FAKE_EXP_MODULE]
    orig = mod.check
    monkeypatch.setattr(mod, "check", lambda res: calls.append(res.scale) or orig(res))
    res = build_report(tmp_path / "rep", only=["test-fake-experiment"], device="cpu", results_dir=rdir)
    p = _validate(res.results_path)["experiments"][0]["paper_scale"]
    assert p["verdict"] == "refuted" and calls == ["smoke", "paper"]
