"""Plans, budgets and the prepared paper-scale run (issue 14 deliverables 2-4), on CPU at tiny sizes.

* the deadline: the trainer and the ensemble trainer stop after a step once it passes, with a
  checkpoint, and resuming ends bitwise where an uninterrupted run ends;
* the cost model's exact scalings (counted FLOPs linear in the batch and in the models);
* the plan: grouping into ensembles, text and JSON (schema-checked), ``--only`` totals, shared jobs
  counted once;
* a tiny paper-shaped run under a budget: a job the plan says cannot finish is never started; a
  training stopped by the deadline checkpoints, the claim is "not run here (budget)" (skipped, exit
  code 4), and a rerun with the same cache continues to the same result as an uninterrupted run;
* ``scripts/gpu_paper_run.sh --size tiny`` end to end: results/<claim>-paper.json that the report
  reads through the same Claim.check, labelled as not the paper's scale.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from gracheck.base import deadline as dl
from gracheck.claims import get, registry
from gracheck.ensemble import step_flops, train_ensemble
from gracheck.train import TrainConfig, load_checkpoint, train

REPO = Path(__file__).resolve().parents[1]
jsonschema = pytest.importorskip("jsonschema")

FAST = dict(dataset="mnist", arch="mlp", hidden=(32,), latent_dim=4, batch_size=32, eval_size=64, train_limit=1000,
            num_threads=1, steps=8, eval_every=0, checkpoint_every=100)
FIG1, FIG3, EQ6 = "fig1-rotation-uniqueness", "fig3-objectives-agree", "eq6-residual-trained"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("GRACHECK_CACHE", str(d))
    from gracheck.experiments import _plan

    monkeypatch.setattr(_plan, "_MEMO", {})  # measurements are per process: start each test afresh
    return d


def _tiny(cid: str, **over):
    from gracheck.report.paper_run import config_for

    registry()
    return dataclasses.replace(config_for(cid, "tiny"), **over)


# ----------------------------------------------------------------------------- the deadline


def test_deadline_nests_to_the_earlier_and_rejects_bad_input():
    assert not dl.active() and dl.remaining() is None and not dl.expired()
    with dl.deadline(100):
        outer = dl.at()
        with dl.deadline(1000):
            assert dl.at() == outer  # the earlier deadline wins
        with dl.deadline(0):
            assert dl.expired() and dl.remaining() <= 0
        assert not dl.expired() and 99 < dl.remaining() <= 100
    assert not dl.active()
    for bad in (-1, float("nan"), float("inf"), "5", True):
        with pytest.raises(ValueError, match="seconds"):
            with dl.deadline(bad):
                pass


def test_trainer_stops_at_the_deadline_with_a_checkpoint_and_resumes_bitwise(tmp_path):
    cfg = TrainConfig(**FAST)
    with dl.deadline(0):
        with pytest.raises(dl.DeadlineReached) as e:
            train(cfg, tmp_path / "cut", progress=False)
    assert e.value.step == 1 and e.value.total == 8 and Path(e.value.checkpoint).is_file()
    assert not (tmp_path / "cut" / "result.json").exists()
    res = train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert res.resumed_from == 1
    train(cfg, tmp_path / "whole", progress=False)
    a, _, _ = load_checkpoint(tmp_path / "cut")
    b, _, _ = load_checkpoint(tmp_path / "whole")
    sa, sb = a.state_dict(), b.state_dict()
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []


def test_ensemble_stops_at_the_deadline_with_a_checkpoint_and_resumes_bitwise(tmp_path):
    cfgs = [TrainConfig(**{**FAST, "beta": b}) for b in (0.5, 1.0)]
    with dl.deadline(0):
        with pytest.raises(dl.DeadlineReached) as e:
            train_ensemble(cfgs, tmp_path / "cut", progress=False)
    assert e.value.step == 1 and Path(e.value.checkpoint).name == "ckpt-00000001.pt"
    res = train_ensemble(cfgs, tmp_path / "cut", resume=True, progress=False)
    assert res.resumed_from == 1 and res.step == 8
    train_ensemble(cfgs, tmp_path / "whole", progress=False)
    for m in range(2):
        a, _, _ = load_checkpoint(tmp_path / "cut" / "models" / f"{m:03d}")
        b, _, _ = load_checkpoint(tmp_path / "whole" / "models" / f"{m:03d}")
        sa, sb = a.state_dict(), b.state_dict()
        assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []


# ----------------------------------------------------------------------------- the cost model


@pytest.mark.parametrize("model", ["beta-vae", "grae-approx"])
def test_counted_flops_are_linear_in_batch_and_models(model):
    """The plan scales FLOPs counted at a small batch / one model to the real ones: exact, as checked here."""
    base = dict(dataset="mnist", arch="conv", width=1 / 16, latent_dim=6, model=model, num_threads=1)
    f2 = step_flops([TrainConfig(**base, batch_size=2)])
    f8 = step_flops([TrainConfig(**base, batch_size=8)])
    two = step_flops([TrainConfig(**base, batch_size=2, beta=b) for b in (0.5, 1.0)])
    assert f8 == 4 * f2 and two == 2 * f2 and f2 > 0


def test_group_configs_follow_check_configs_and_chunk():
    from gracheck.experiments._plan import group_configs

    mk = lambda **kw: TrainConfig(**{**FAST, **kw})  # noqa: E731
    cfgs = [mk(beta=b) for b in (0.1, 0.2, 0.3)] + [mk(beta=0.1)] + [mk(latent_dim=6, beta=0.5)] + \
        [mk(beta=0.4, posterior="full")]
    groups = group_configs(cfgs, max_models=2)
    assert [len(g) for g in groups] == [2, 2, 1]  # 4 distinct d=4 configs in two chunks, then d=6
    assert {c.latent_dim for c in groups[2]} == {6}
    assert sum(len(g) for g in groups) == 5  # the duplicate is trained once


# ----------------------------------------------------------------------------- the plan


def test_plan_text_json_schema_only_totals_and_shared_jobs(cache):
    from gracheck.report._plan import build_plan, plan_schema_path, render_plan_text

    schema = json.loads(plan_schema_path().read_text())
    configs = {FIG1: _tiny(FIG1), FIG3: _tiny(FIG3), EQ6: _tiny(EQ6)}
    t0 = time.perf_counter()
    doc = build_plan(scale="paper", device="cpu", only=[EQ6, FIG3, FIG1], configs=configs, budget=3600)
    assert time.perf_counter() - t0 < 120
    jsonschema.validate(json.loads(json.dumps(doc, allow_nan=False)), schema)
    assert [c["claim_id"] for c in doc["claims"]] == [FIG1, FIG3, EQ6]  # priority order, not the --only order
    eq6 = doc["claims"][2]
    shared = [j for j in eq6["jobs"] if j["shared_with"]]
    assert shared and all(j["shared_with"] == FIG3 and not j["counted_in_total"] for j in shared)
    own = sum(j["seconds"] for c in doc["claims"] for j in c["jobs"] if j["counted_in_total"])
    assert doc["total"]["seconds"] == pytest.approx(own)
    assert doc["total"]["seconds"] < sum(c["total"]["seconds"] for c in doc["claims"])  # shared counted once
    for c in doc["claims"]:
        assert c["jobs"][-1]["kind"] == "evaluate" and c["total"]["seconds"] > 0
        for j in c["jobs"]:
            assert j["seconds"] is not None and j["error"] is None and j["method"]
    fig3 = doc["claims"][1]
    train_job = fig3["jobs"][0]
    assert train_job["runs"] == 4 and train_job["steps"] == configs[FIG3].steps and train_job["flops"] > 0
    assert {m["beta"] for m in train_job["models"]} == {0.1, 0.5}
    assert all(c["completes"] for c in doc["budget"]["claims"])
    text = render_plan_text(doc)
    for cid in (FIG1, FIG3, EQ6):
        assert cid in text
    assert "shared with fig3-objectives-agree: counted once" in text and "Total for the 3 claim(s)" in text
    assert "Not in the FLOP counts" in text and "GPU floor" in text
    # the GPU floor: each job's counted FLOPs at the H200 rate of the precision its kind runs in on CUDA
    rate = {"train": 788.0e12, "evaluate": 66.9e12, "trials": 66.9e12}
    for c in doc["claims"]:
        counted = [j for j in c["jobs"] if j["flops"] is not None]
        assert c["gpu_floor"]["seconds"] == pytest.approx(sum(j["flops"] / rate[j["kind"]] for j in counted))
        assert c["gpu_floor"]["complete"] == (len(counted) == len(c["jobs"]))
    assert doc["gpu_floor"]["seconds"] < sum(c["gpu_floor"]["seconds"] for c in doc["claims"])  # shared once
    # --only a subset: its own total
    sub = build_plan(scale="paper", device="cpu", only=[FIG3], configs={FIG3: configs[FIG3]})
    assert [c["claim_id"] for c in sub["claims"]] == [FIG3]
    assert sub["total"]["runs"] == fig3["total"]["runs"]


def test_plan_cli_json_validates_and_text_runs(cache):
    from gracheck.report._plan import plan_schema_path

    env = {**os.environ, "PYTHONPATH": str(REPO), "GRACHECK_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gracheck.report", "--scale", "smoke", "--plan", "--only", "fig3-objectives-agree"]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    jsonschema.validate(doc, json.loads(plan_schema_path().read_text()))
    assert doc["scale"] == "smoke" and [c["claim_id"] for c in doc["claims"]] == [FIG3]
    out = subprocess.run([*cmd, "--budget", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "Under --budget 1" in out.stdout and "would run nothing" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "gracheck.report", "--json"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--json: only with --list or --plan" in bad.stderr


# ----------------------------------------------------------------------------- the budget


def _budget_report(tmp_path, name, budget, cfg, **kw):
    from gracheck.report._plan import run_with_budget

    return run_with_budget(budget, out_dir=tmp_path / name, scale="paper", device="cpu", only=[FIG3],
                           configs={FIG3: cfg}, results_dir=None, quiet=True, **kw)


def test_budget_never_starts_what_the_plan_says_cannot_finish(cache, tmp_path):
    run = _budget_report(tmp_path, "r", 3, _tiny(FIG3, steps=400))
    c = run.report.claims[0]
    assert c["status"] == "skipped" and "not run here (budget)" in c["reason"] and "needs ~" in c["reason"]
    assert run.exit_code == 4
    assert not (cache / "ensembles").exists() and not (cache / "models").exists()  # nothing was started


def test_budget_stops_cleanly_at_the_deadline_and_a_rerun_continues(cache, tmp_path, monkeypatch):
    """A tiny paper-shaped fig3 (conv net, b × β ensemble): the deadline cuts the training; the rerun with the same
    cache resumes from the checkpoint and ends with the result of an uninterrupted run in another cache."""
    from gracheck.experiments import _plan

    cfg = _tiny(FIG3, steps=60)
    real = _plan.estimate
    # pretend every job is cheap, so the run starts the training and the deadline (not the plan) stops it
    monkeypatch.setattr(_plan, "estimate", lambda job, device: _plan.Estimate(0.0, 0, "pretended cheap (test)"))
    monkeypatch.setattr(_plan, "MARGIN", 0.0)
    # The deadline passes after 20 checks (the report's one per claim, then the ensemble's one per step), not
    # after wall-clock seconds: a fixed time cut depends on the machine's speed (a fast machine finished the
    # training inside a 5 s budget and the test saw the plan refuse the evaluation instead).
    from gracheck.base import deadline as _dl

    checks = {"n": 0}

    def expired_after_20_checks() -> bool:
        if not _dl.active():
            return False
        checks["n"] += 1
        return checks["n"] > 20

    real_expired = _dl.expired
    monkeypatch.setattr(_dl, "expired", expired_after_20_checks)
    t0 = time.perf_counter()
    run = _budget_report(tmp_path, "cut", 600.0, cfg)
    assert time.perf_counter() - t0 < 120
    monkeypatch.setattr(_dl, "expired", real_expired)
    c = run.report.claims[0]
    assert c["status"] == "skipped" and "not run here (budget)" in c["reason"], c
    assert "deadline reached" in c["reason"] and "checkpoint" in c["reason"]
    assert run.exit_code == 4
    ens = next(p for p in (cache / "ensembles").iterdir() if p.is_dir())
    step = int((ens / "latest").read_text().strip()[5:13])
    assert 0 < step < 60
    doc = json.loads(run.report.results_path.read_text())
    assert doc["claims"][0]["status"] == "skipped" and doc["counts"]["skipped"] == 1
    assert doc["counts"]["verified"] == doc["counts"]["refuted"] == doc["counts"]["inconclusive"] == 0

    monkeypatch.setattr(_plan, "estimate", real)
    run2 = _budget_report(tmp_path, "rest", 600, cfg)
    assert run2.exit_code == 0 and run2.report.claims[0]["status"] in ("verified", "refuted", "inconclusive")
    assert not ens.exists()  # _zoo.train_grid removes the ensemble's working folder once its members are complete
    from gracheck.experiments import _zoo, experiment_module
    from gracheck.experiments.fig3_objectives import grid_configs

    members = grid_configs(cfg, seed=0, device="cpu")
    for c in members:  # every member resumed from the checkpoint the deadline left, and finished
        res = json.loads((_zoo.model_dir(c) / "result.json").read_text())
        assert res["resumed_from"] == step and res["step"] == 60

    rows = _plan.logged_jobs(experiment_module(FIG3), cfg, 0, "cpu")
    assert rows[0]["stopped"] and 0 < rows[0]["fraction"] < 1 and not rows[-1]["stopped"]
    assert [r["kind"] for r in rows] == ["train", "train", "evaluate"]

    # the same claim uninterrupted, in a fresh cache: the same numbers (bitwise on CPU)
    monkeypatch.setenv("GRACHECK_CACHE", str(tmp_path / "cache2"))
    from gracheck.experiments import run_experiment

    a = run_experiment("gracheck.experiments.fig3_objectives", scale="paper", config=cfg, device="cpu")
    monkeypatch.setenv("GRACHECK_CACHE", str(cache))
    b = run_experiment("gracheck.experiments.fig3_objectives", scale="paper", config=cfg, device="cpu")
    assert a.scale == b.scale == "custom"
    assert {k: m.to_dict() for k, m in a.metrics.items() if "seconds" not in k} == \
        {k: m.to_dict() for k, m in b.metrics.items() if "seconds" not in k}


def test_budget_rejects_bad_values(tmp_path):
    from gracheck.report._plan import run_with_budget
    from gracheck.report._run import UsageError

    for bad in (0, -5, float("nan"), "10"):
        with pytest.raises(UsageError, match="--budget"):
            run_with_budget(bad, out_dir=tmp_path / "x", only=[FIG3])
    with pytest.raises(UsageError, match="--no-cache"):
        run_with_budget(10, out_dir=tmp_path / "x", only=[FIG3], use_cache=False)


# ----------------------------------------------------------------------------- the prepared script


@pytest.mark.slow
def test_gpu_script_at_tiny_size_end_to_end_and_the_report_reads_it(tmp_path):
    from gracheck.report._plan import plan_schema_path
    from gracheck.report._run import load_paper_result, schema_path
    from gracheck.report._text import provenance_line

    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "OUT": str(out), "GRACHECK_CACHE": str(cache), "GRACHECK_PAPER_WORK": str(tmp_path / "work"),
           "OMP_NUM_THREADS": "1", "GRACHECK_GIT_COMMIT": "test-commit"}
    env.pop("GRACHECK_RUN_STARTED", None)
    cmd = ["bash", str(REPO / "scripts" / "gpu_paper_run.sh"), "--size", "tiny", "--budget", "500",
           "--claims", FIG1, FIG3, "--state", str(tmp_path / "state")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert {f.name for f in out.iterdir()} == {"log.txt", "summary.json", "paper-results.tar.gz", "state.tar.gz"}
    summary = json.loads((out / "summary.json").read_text())
    assert [c["status"] for c in summary["claims"]] != [] and summary["exit_code"] == 0
    assert all(c["status"] in ("verified", "refuted", "inconclusive") for c in summary["claims"]), summary
    rdir = tmp_path / "x"
    with tarfile.open(out / "paper-results.tar.gz") as tar:
        tar.extractall(rdir, filter="data")
    results = rdir / "results"
    plan = json.loads((results / "plan-tiny-cpu.json").read_text())
    jsonschema.validate(plan, json.loads(plan_schema_path().read_text()))
    full = json.loads(schema_path().read_text())
    paper_schema = {**full["$defs"]["paper_scale"], "$defs": full["$defs"]}
    registry()
    for cid in (FIG1, FIG3):
        raw = json.loads((results / f"{cid}-paper.json").read_text())
        prov = raw["provenance"]
        for k in ("config", "seeds", "device", "torch", "wall_seconds", "achieved_tflops", "peak_tflops", "git_commit",
                  "budget_seconds", "flops_counted"):
            assert k in prov, k
        assert prov["git_commit"] != "" and prov["device"]["type"] == "cpu" and raw["scale"] == "custom"
        entry = load_paper_result(get(cid), results, tmp_path / "rep", seed=0)
        jsonschema.validate(json.loads(json.dumps(entry, default=str)), paper_schema)
        assert entry["error"] == "" and entry["label"].startswith("custom scale, NOT the paper's settings")
        assert entry["verdict"] in ("verified", "refuted", "inconclusive") and entry["results"]
        assert entry["figures"] and all((tmp_path / "rep" / f).is_file() for f in entry["figures"])
        assert "achieved" in provenance_line(entry) and "commit " in provenance_line(entry)
    # the report shows the file beside the (here: not run) smoke numbers, labelled by its scale, with its provenance
    from gracheck.report import build_report

    with dl.deadline(0):
        rep = build_report(tmp_path / "rep2", only=[FIG3], device="cpu", results_dir=results, quiet=True)
    for page in (rep.markdown_path, rep.html_path):
        txt = page.read_text()
        assert "custom scale, NOT the paper&#x27;s settings" in txt or "custom scale, NOT the paper's settings" in txt
        assert "Provenance:" in txt and "achieved" in txt
    assert json.loads(rep.results_path.read_text())["claims"][0]["status"] == "skipped"
    # a paper-scale config run on a CPU is labelled a CPU run, never a GPU run
    raw = json.loads((results / f"{FIG3}-paper.json").read_text())
    cpu_dir = tmp_path / "cpu-paper"
    cpu_dir.mkdir()
    (cpu_dir / f"{FIG3}-paper.json").write_text(json.dumps({**raw, "scale": "paper"}))
    label = load_paper_result(get(FIG3), cpu_dir, tmp_path / "rep3", seed=0)["label"]
    assert label.startswith("paper scale (CPU run") and "GPU" not in label
    # a second command on the same cache: everything is cached, nothing retrained
    p2 = subprocess.run([*cmd, "--no-suite-plan"], capture_output=True, text=True, env=env, timeout=900)
    assert p2.returncode == 0, p2.stdout[-3000:]
    assert "training an ensemble" not in p2.stdout and "result cached" in p2.stdout
