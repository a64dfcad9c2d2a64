"""Tests of layer 0 (gracheck.base): the decision rules' three outcomes, the one bootstrap, the typed
tolerances, the formatter, the atomic writer and the per-entry cache lock (two processes)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gracheck.base import stats, verdicts
from gracheck.base.evidence import CheckResult, Claim, Evidence, claim, decided, result, tcompare
from gracheck.base.files import atomic_open, atomic_write_text, entry_lock, file_digest
from gracheck.base.text import fmt
from gracheck.base.tolerances import TOLERANCES, ErrorBound, SignificanceLevel, StandardErrors, Tolerance, tol

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- verdicts: one synthetic case per outcome
@pytest.mark.parametrize("ci, outcome, words", [
    ((0.9, 1.2), "verified", "inside the margin"),
    ((1.3, 1.6), "refuted", "entirely above"),
    ((0.5, 0.7), "refuted", "entirely below"),
    ((1.1, 1.4), "inconclusive", "straddles the margin's end 1.25"),
    ((0.7, 1.1), "inconclusive", "straddles the margin's end 0.8"),
    ((0.7, 1.4), "inconclusive", "straddles"),  # wider than the margin on both sides
    ((0.9, math.inf), "inconclusive", "not finite"),
])
def test_equivalence_three_outcomes(ci, outcome, words):
    d = verdicts.equivalence(ci, 0.8, 1.25, what="ratio")
    assert d.outcome == outcome and words in d.reason, d
    assert d.verified == (outcome == "verified")
    assert f"[{ci[0]:.4g}, {ci[1]:.4g}]" in d.reason  # the reason carries the numbers it was decided on


@pytest.mark.parametrize("claimed, ci, outcome", [
    ("above", (0.1, 0.3), "verified"),
    ("above", (-0.3, -0.1), "refuted"),
    ("above", (-0.028, 0.054), "inconclusive"),  # fig3's slope at smoke scale
    ("below", (3.0, 4.9), "verified"),
    ("below", (5.2, 9.0), "refuted"),
    ("below", (3.07, 12.24), "inconclusive"),  # fig1's median angle at smoke scale (threshold 5°)
])
def test_one_sided_trend_three_outcomes(claimed, ci, outcome):
    threshold = 0.0 if ci[1] < 1 else 5.0
    d = verdicts.one_sided(ci, threshold, claimed=claimed, what="statistic")
    assert d.outcome == outcome, d


def test_one_sided_ends_strict_and_not_and_a_value_without_error():
    assert verdicts.one_sided((0.2, 0.5), 0.5, claimed="below", strict=False, what="r").outcome == "verified"
    assert verdicts.one_sided((0.2, 0.5), 0.5, claimed="below", what="r").outcome == "inconclusive"
    assert verdicts.one_sided((0.5, 0.7), 0.5, claimed="below", what="r").outcome == "refuted"  # lo ≥ t
    assert verdicts.one_sided((0.5, 0.7), 0.5, claimed="below", strict=False, what="r").outcome == "inconclusive"
    # no sampling error: never inconclusive
    assert verdicts.one_sided((1e-15, 1e-15), 1e-10, claimed="below", strict=False, level=None,
                              what="max").outcome == "verified"
    d = verdicts.one_sided((1e-6, 1e-6), 1e-10, claimed="below", strict=False, level=None, what="max")
    assert d.outcome == "refuted" and "value 1e-06" in d.reason
    with pytest.raises(ValueError, match="claimed"):
        verdicts.one_sided((0, 1), 0.5, claimed="sideways", what="x")
    with pytest.raises(ValueError, match="ci"):
        verdicts.one_sided((1, 0), 0.5, claimed="above", what="x")


def test_precondition_unmet_is_inconclusive_naming_it_and_the_measured_value():
    d = verdicts.precondition(False, name="'runs near the optimum'", measured="best gap 0.017 nats/point",
                              required="< 0.01 nats/point")
    assert d.outcome == "inconclusive"
    assert "'runs near the optimum'" in d.reason and "0.017 nats/point" in d.reason and "< 0.01" in d.reason
    assert verdicts.precondition(True, name="n", measured="400 points", required="≥ 100").outcome == "verified"


def test_combine_refuted_outranks_inconclusive_outranks_verified():
    assert verdicts.combine(["verified", "verified"]) == "verified"
    assert verdicts.combine(["verified", "inconclusive"]) == "inconclusive"
    assert verdicts.combine(["inconclusive", "refuted", "verified"]) == "refuted"
    with pytest.raises(ValueError, match="no decision-rule outcome"):
        verdicts.combine([])
    with pytest.raises(ValueError, match="unknown"):
        verdicts.combine(["passed"])


def test_what_would_decide_formula_and_directions():
    # one-sided, estimate on the claimed side: n' = n (h/δ)², h = est − lo, δ = est − threshold
    n, outcome = verdicts.what_would_decide(0.0126, (-0.0277, 0.054), 400, low=0.0)
    assert outcome == "verified" and n == math.ceil(400 * ((0.0126 + 0.0277) / 0.0126) ** 2)
    # estimate on the wrong side: more data would refute
    n, outcome = verdicts.what_would_decide(8.13, (3.07, 12.24), 128, high=5.0)
    assert outcome == "refuted" and n == math.ceil(128 * ((8.13 - 3.07) / (8.13 - 5.0)) ** 2)
    # equivalence, estimate inside: the worse of the two ends decides
    n, outcome = verdicts.what_would_decide(1.0, (0.7, 1.2), 100, low=0.8, high=1.25)
    assert outcome == "verified" and abs(n - 225) <= 1  # 100·(0.3/0.2)², the upper end (0.2 from 1.25) decides
    assert verdicts.what_would_decide(5.0, (4.0, 6.0), 10, high=5.0) == (None, "verified")  # δ = 0
    s = verdicts.decide_sentence(0.0126, (-0.0277, 0.054), 400, unit="held-out points", paper_n=5000, low=0.0)
    assert "4,092 held-out points" in s and "now 400" in s and "5,000, enough" in s


def test_what_would_decide_matches_a_bootstrap_at_the_predicted_n():
    """The 1/√n assumption, checked by a different computation: bootstrap a mean at n and at the predicted n'."""
    rng = np.random.default_rng(3)
    pop = rng.normal(0.08, 1.0, 200_000)
    x = pop[:200]
    m, lo, hi = stats.bootstrap_mean_ci(x, B=2000, level=0.95, rng=np.random.default_rng(4))
    need, _ = verdicts.what_would_decide(m, (lo, hi), len(x), low=0.0)
    assert need is not None and need > len(x)
    big = np.random.default_rng(5).choice(x, need, replace=True)  # same spread, n' points
    _, lo2, hi2 = stats.bootstrap_mean_ci(big, B=500, level=0.95, rng=np.random.default_rng(6))
    predicted_half = (m - lo) * math.sqrt(len(x) / need)
    assert abs((big.mean() - lo2) - predicted_half) < 0.15 * predicted_half


def test_decided_results_carry_outcome_and_reason_and_refuse_contradictions():
    d = verdicts.one_sided((-0.1, 0.2), 0.0, claimed="above", what="slope")
    r = decided("x-claim", d, measured=0.05, expected="> 0", abs_err=-0.1, atol=0.0, detail="slope", seed=0,
                note="About 900 points would decide it.")
    assert r.outcome == "inconclusive" and not r.passed and r.reason.endswith("would decide it.")
    assert "is inconclusive" in r.failure_message()
    assert r.to_dict()["outcome"] == "inconclusive"
    with pytest.raises(ValueError, match="contradicts"):
        result("x", "empirical", passed=True, measured=1, expected=1, abs_err=0, outcome="refuted")


# ---------------------------------------------------------------- the one bootstrap
def test_bootstrap_is_paired_and_vectorised_equals_the_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    loop = stats.bootstrap_ci(lambda u, v: u.mean() - v.mean(), a, b, B=300, level=0.9, rng=np.random.default_rng(1))
    vec = stats.bootstrap_ci(lambda u, v: u.mean(-1) - v.mean(-1), a, b, B=300, level=0.9,
                             rng=np.random.default_rng(1), vectorised=True)
    assert loop == pytest.approx(vec, rel=0, abs=1e-12)
    # paired: the difference of identical arrays has a zero-width interval
    assert stats.bootstrap_ci(lambda u, v: u.mean() - v.mean(), a, a.copy(), B=50, level=0.95,
                              rng=np.random.default_rng(2)) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="rows"):
        stats.bootstrap_ci(np.mean, a, b[:10], B=5, level=0.9, rng=rng)
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci(np.mean, a, B=5, level=1.5, rng=rng)


def test_percentile_interval_drops_non_finite_replicates():
    assert stats.percentile_interval([1.0, 2.0, np.nan, np.inf, 3.0], 0.5) == (1.5, 2.5)
    lo, hi = stats.percentile_interval([np.nan], 0.9)
    assert math.isnan(lo) and math.isnan(hi)


def test_gauss_hermite_is_exact_for_polynomials_and_grid_matches_product():
    x, w = stats.gauss_hermite(5)
    moments = [float(w @ x**k) for k in range(10)]
    assert moments == pytest.approx([1, 0, 1, 0, 3, 0, 15, 0, 105, 0], abs=1e-11)  # E Z^k, k ≤ 2n − 1
    nodes, wts = stats.gauss_hermite_grid(4, 2)
    assert nodes.shape == (16, 2) and wts.sum() == pytest.approx(1.0)
    assert float(wts @ (nodes[:, 0] ** 2 * nodes[:, 1] ** 2)) == pytest.approx(1.0)


# ---------------------------------------------------------------- typed tolerances
def test_every_tolerance_has_a_kind_and_a_reason():
    for name, t in TOLERANCES.items():
        assert type(t) in (ErrorBound, StandardErrors, SignificanceLevel), name
        assert len(t.reason) > 20, name
    assert isinstance(tol("montecarlo-5se"), StandardErrors) and tol("montecarlo-5se").k == 5.0
    assert isinstance(tol("sec3-ks-level"), SignificanceLevel)
    assert not hasattr(tol("montecarlo-5se"), "atol")  # a multiple of a standard error is not an absolute error


def test_a_tolerance_of_the_wrong_kind_is_refused():
    with pytest.raises(TypeError, match="StandardErrors, not a ErrorBound"):
        tol("montecarlo-5se", ErrorBound)
    with pytest.raises(TypeError, match="SignificanceLevel"):
        tcompare("x", "autograd", 1.0, 1.0, "sec3-ks-level", "p-values", 0)
    assert isinstance(tol("float64-exact", Tolerance), ErrorBound)
    with pytest.raises(KeyError, match="no tolerance"):
        tol("no-such-tolerance")


# ---------------------------------------------------------------- evidence, formatting
def test_claim_check_returns_evidence_with_its_record_and_a_statement_hash():
    c = claim("test-base-claim", source="Eq. T", statement="A record travels with the evidence.", kind="empirical")

    @c.method("empirical")
    def _(*, seed, candidate, **kw):
        return Evidence([result("test-base-claim", "empirical", passed=True, measured=1, expected=1, abs_err=0)],
                        record={"numbers": [1, 2]})

    ev = c.check()
    assert isinstance(ev, Evidence) and isinstance(ev, list) and ev.record == {"numbers": [1, 2]}
    assert isinstance(ev[0], CheckResult) and ev[0].source == "Eq. T"
    assert len(c.statement_hash) == 16
    other = Claim(id=c.id, source=c.source, statement=c.statement + " (edited)", kind=c.kind)
    assert other.statement_hash != c.statement_hash
    with pytest.raises(TypeError):
        c.checks["symbolic"] = None  # read-only view


def test_fmt_one_formatter():
    import torch

    assert fmt(0.123456789) == "0.123457" and fmt(1e-12) == "1e-12" and fmt(3) == "3" and fmt(None) == "—"
    assert fmt(True) == "true" and fmt(float("nan")) == "nan" and fmt(0.0) == "0"
    assert fmt(torch.tensor([1.0, 0.5])) == "[1, 0.5]" and fmt(np.float64(2.5)) == "2.5"
    assert fmt(list(range(10)), short=True) == "[0, 1, 2, 3, 4, 5, …]"
    assert len(fmt("x" * 500, short=True)) == 160


# ---------------------------------------------------------------- files: atomic writes, locks
def test_atomic_open_keeps_the_old_file_when_the_write_fails(tmp_path):
    p = tmp_path / "sub" / "result.json"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(p, "w") as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert p.read_text() == "old"
    assert [q.name for q in p.parent.iterdir()] == ["result.json"]  # no temporary file left
    import hashlib

    assert file_digest(p, "md5") == hashlib.md5(b"old").hexdigest()


def test_entry_lock_makes_a_second_process_wait(tmp_path):
    entry = tmp_path / "entry"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from gracheck.base.files import entry_lock
        with entry_lock({str(entry)!r}):
            print("locked", flush=True)
            time.sleep(1.5)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    waited: list[str] = []
    import time

    t0 = time.monotonic()
    with entry_lock(entry, on_wait=waited.append):
        dt = time.monotonic() - t0
    holder.wait(timeout=30)
    assert dt > 0.5 and waited and "waiting for another process" in waited[0]
    assert f"pid {holder.pid}" in waited[0]  # the one lock records its owner: the wait line names it
    with entry_lock(entry, timeout=1):  # free again
        pass


def test_one_lock_for_run_folders_and_cache_entries(tmp_path):
    """The trainer's run-folder lock and the cache's entry lock are one FolderLock: both record pid, host and
    start; a dead owner's lock file is taken over with a warning naming it, in both modes; a live owner is
    refused (run folder) or waited for up to a timeout (cache entry), both naming the owner."""
    import json
    import socket
    import warnings

    import gracheck.train as gtrain
    from gracheck.base.files import FolderLock, FolderLocked

    assert gtrain.FolderLock is FolderLock and gtrain.FolderLocked is FolderLocked
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    stale = json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00+00:00"})
    entry = tmp_path / "entry"
    for lock_file, take in ((tmp_path / "train.lock", lambda: FolderLock(tmp_path / "train.lock")),
                            (tmp_path / "entry.lock", lambda: entry_lock(entry))):
        lock_file.write_text(stale)  # left behind by a killed owner: no flock held on it
        with pytest.warns(RuntimeWarning, match=f"stale lock of pid {dead.pid}"):
            with take():
                info = json.loads(lock_file.read_text())
                assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and "started" in info
        assert not lock_file.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a lock released cleanly leaves nothing to take over
        with entry_lock(entry):
            pass
    with FolderLock(tmp_path / "train.lock"):
        with pytest.raises(FolderLocked, match=f"run folder {tmp_path} is in use by pid {os.getpid()}"):
            FolderLock(tmp_path / "train.lock").acquire()
        with pytest.raises(TimeoutError, match=f"held by pid {os.getpid()}"):
            FolderLock(tmp_path / "train.lock", wait=True, timeout=0.2, poll=0.05).acquire()


# The seeds the trainer derived with its own copy of the helper (train._derive_seed, removed): model
# initialisation ("init", seed), the data order ("data", seed, epoch), posterior samples and Jacobian
# columns ("noise", seed, rank) and evaluation ("eval", seed). Cached models are keyed by their config,
# not by these seeds, so a change here would silently change every cached model: they must not move.
_TRAINER_SEEDS = {
    ("init", 0): 3535224811890619605, ("init", 3): 1815495235601927950,
    ("data", 0, 0): 301721334361282289, ("data", 3, 7): 5786778121746166626,
    ("noise", 0, 0): 3613634637937742484, ("noise", 3, 1): 6597009202843232472,
    ("eval", 0): 6783315581417943899, ("eval", 3): 1491285489956519968,
}


def test_one_seed_derivation_keeps_the_trainers_seeds():
    import gracheck.train as gtrain

    assert not hasattr(gtrain, "_derive_seed") and gtrain.derive_seed is stats.derive_seed
    assert {k: stats.derive_seed(*k) for k in _TRAINER_SEEDS} == _TRAINER_SEEDS


_FAKE_EXPERIMENT = '''
import dataclasses, time
from pathlib import Path
from gracheck.experiments._common import ExperimentResult, Metric, config_dict, experiment_claim

CLAIM = experiment_claim(__name__, id="test-locked-experiment", source="Fig. L",
                         statement="Two reports share one cache entry.", title="L", shows="nothing")

@dataclasses.dataclass(frozen=True)
class Config:
    n: int = 1

CONFIGS = {"smoke": Config(), "paper": Config(2)}

def run(config, *, seed, device, out_dir, progress=None):
    with open(Path(__file__).with_name("runs.log"), "a") as f:
        f.write("ran\\n")
    time.sleep(2.0)
    fig = Path(out_dir) / "lock-figure.png"
    fig.write_bytes(b"png")
    return ExperimentResult(claim_id=CLAIM.id, scale="smoke", config=config_dict(config), seeds=[seed],
                            device=device, metrics={"m": Metric(1.0)}, figures=[str(fig)], seconds=0.1)

def check(res):
    return []
'''


def test_two_processes_on_one_cache_entry_compute_it_once(tmp_path):
    """Issue 17 item 8: two reports sharing $GRACHECK_CACHE must not both run the same entry: the second
    waits for the first one's lock, then loads its result."""
    (tmp_path / "lockexp.py").write_text(_FAKE_EXPERIMENT)
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(tmp_path)!r}, {str(ROOT)!r}]
        from gracheck.experiments import run_experiment
        res = run_experiment("lockexp", scale="smoke", seed=0, out_dir=sys.argv[1])
        print(res.notes[-1] if res.notes else "computed")
    """)
    env = {**os.environ, "GRACHECK_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"out{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert (tmp_path / "runs.log").read_text().count("ran") == 1, outs
    assert sum("loaded from cache" in o[0] for o in outs) == 1, outs
    for i in range(2):
        assert (tmp_path / f"out{i}" / "lock-figure.png").read_bytes() == b"png"


def test_cache_key_is_one_digest_of_sorted_json():
    """The experiment cache and the model cache share one key helper: 16 hex digits, independent of the
    order of dict keys, different for different parts."""
    from gracheck.base.files import cache_key

    k = cache_key([{"a": 1, "b": [1, 2]}, "v1"])
    assert len(k) == 16 and int(k, 16) >= 0
    assert cache_key([{"b": [1, 2], "a": 1}, "v1"]) == k and cache_key([{"a": 1, "b": [1, 2]}, "v2"]) != k
