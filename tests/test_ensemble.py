"""The ensemble trainer (gracheck.ensemble): M models as one computation against M one-at-a-time runs.

The reference is :func:`gracheck.train.train` on each config alone (a different computation: one
model, its own GEMMs, its own graph). Compared bitwise (torch.equal): every parameter and buffer,
every Adam state tensor, each generator's state, the training log (log.csv and log.jsonl, every
column but the wall time) and the held-out evaluations (eval.jsonl). Runs use real MNIST at a tiny
scale (MLP 784-64-4 or the App. D conv nets at width 1/16, a dozen steps, 1 CPU thread unless stated).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gracheck as gc
from gracheck.base.tolerances import tol
from gracheck.ensemble import (
    Ensemble,
    EnsembleDiverged,
    EnsembleRun,
    check_configs,
    load_ensemble_checkpoint,
    step_flops,
    time_steps,
    train_ensemble,
)
from gracheck.train import ConfigMismatchError, TrainConfig, TrainingDiverged, build_model, load_checkpoint, read_log, train

REPO = Path(__file__).resolve().parents[1]

FAST = dict(dataset="mnist", arch="mlp", hidden=(64,), latent_dim=4, batch_size=32, eval_size=64, train_limit=2000,
            num_threads=1, steps=12, eval_every=6, checkpoint_every=5)
CONV = dict(arch="conv", width=1 / 16, batch_size=16, latent_dim=6, steps=6, eval_every=3, eval_size=32)


def _cfgs(*variants: dict, **common) -> list[TrainConfig]:
    return [TrainConfig(**{**FAST, **common, **v}) for v in variants]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _ckpt(folder: Path, step: int) -> dict:
    return torch.load(folder / f"ckpt-{step:08d}.pt", weights_only=True)


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_log(path)]


def _differences(single: Path, member: Path, step: int, logs=("log.jsonl", "log.csv", "eval.jsonl", "eval.csv")) -> list[str]:
    """Everything in which a one-at-a-time run folder and an ensemble member's folder differ (empty: none)."""
    a, b = _ckpt(single, step), _ckpt(member, step)
    out = [f"model {k}" for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    if a["model"].keys() != b["model"].keys():
        out.append("model keys")
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    if sa.keys() != sb.keys():
        out.append("optimizer state keys")
    out += [f"adam {i}.{k}" for i in sa for k in sa[i] if not torch.equal(sa[i][k], sb[i][k])]
    if a["optimizer"]["param_groups"] != b["optimizer"]["param_groups"]:
        out.append("adam param_groups")
    if not torch.equal(a["rng"]["noise"][0], b["rng"]["noise"][0]):
        out.append("generator state")
    for name in logs:
        if _rows(single / name) != _rows(member / name):
            out.append(name)
    ra, rb = (json.loads((p / "result.json").read_text()) for p in (single, member))
    for k in ("train_metrics", "eval_metrics", "step", "config"):
        if ra[k] != rb[k]:
            out.append(f"result.json {k}")
    return out


# --------------------------------------------------------------------------- equality with one-at-a-time runs

CASES = {
    # three posterior structures (so three head groups) and two seeds (two data orders and noise streams)
    "beta-vae-mixed-posteriors": _cfgs(dict(model="beta-vae", beta=0.5, seed=3),
                                       dict(model="beta-vae", beta=1.0, seed=3, posterior="block-diagonal", block=2),
                                       dict(model="beta-vae", beta=0.2, seed=4, posterior="full")),
    "grae-approx": _cfgs(dict(model="grae-approx", beta=0.5, seed=3), dict(model="grae-approx", beta=0.1, seed=5),
                         grae_k=2),
    "grae": _cfgs(dict(model="grae", beta=0.5, seed=3), dict(model="grae", beta=0.2, seed=3)),
    # sizes that are not multiples of the SIMD block nor 64 bytes: the per-model fallbacks of elementwise ops and GEMMs
    "odd-sizes-grae-approx": _cfgs(dict(model="grae-approx", beta=0.5, seed=3), dict(model="grae-approx", beta=0.2, seed=4),
                                   batch_size=25, latent_dim=7, hidden=(50,), activation="softplus"),
    "two-threads-beta-vae": _cfgs(dict(model="beta-vae", beta=0.5, seed=3),
                                  dict(model="beta-vae", beta=0.3, seed=3, posterior="block-diagonal", block=3),
                                  num_threads=2, hidden=(128,), latent_dim=12, batch_size=64),
}
SLOW_CASES = {
    "conv-beta-vae": _cfgs(dict(model="beta-vae", beta=0.5, seed=3),
                           dict(model="beta-vae", beta=0.2, seed=4, posterior="block-diagonal", block=3), **CONV),
    "conv-grae-approx": _cfgs(dict(model="grae-approx", beta=0.5, seed=3), dict(model="grae-approx", beta=0.2, seed=4),
                              **CONV),
}


@pytest.mark.parametrize(
    "case", [*CASES, *(pytest.param(c, marks=pytest.mark.slow) for c in SLOW_CASES)]
)
def test_ensemble_equals_one_at_a_time(tmp_path, case):
    """Each model of the ensemble ends bitwise as gracheck.train.train leaves it alone (see the module docstring).

    The ensemble writes intermediate checkpoints (checkpoint_every=5) and evaluates at steps 0, 6, 12,
    like the single runs; each member folder is compared with its single run's folder.
    """
    cfgs = {**CASES, **SLOW_CASES}[case]
    res = train_ensemble(cfgs, tmp_path / "ens", progress=False)
    assert res.step == cfgs[0].steps and len(res.results) == len(cfgs)
    for i, c in enumerate(cfgs):
        train(c, tmp_path / f"single{i}", progress=False)
        assert _differences(tmp_path / f"single{i}", Path(res.model_dirs[i]), c.steps) == [], (case, i)
        assert res.results[i].eval_metrics == json.loads((tmp_path / f"single{i}" / "result.json").read_text())["eval_metrics"]


def test_member_folder_loads_and_continues_alone(tmp_path):
    """A member folder is a complete trainer run: load_checkpoint loads it, and gracheck.train.train extends it
    (resume with more steps) to bitwise the single run of that many steps."""
    cfgs = _cfgs(dict(model="beta-vae", beta=0.5, seed=3), dict(model="beta-vae", beta=0.2, seed=4), steps=6,
                 checkpoint_every=0, eval_every=0)
    res = train_ensemble(cfgs, tmp_path / "ens", progress=False)
    member = Path(res.model_dirs[1])
    model, cfg, step = load_checkpoint(member)
    assert step == 6 and cfg == cfgs[1] and not model.training
    meta = json.loads((member / "ensemble-member.json").read_text())
    assert meta["index"] == 1 and meta["size"] == 2 and meta["seconds_share"] == pytest.approx(meta["seconds_total"] / 2)
    longer = TrainConfig(**{**cfgs[1].to_dict(), "steps": 9})
    ext = train(longer, member, resume=True, progress=False)
    assert ext.resumed_from == 6
    train(longer, tmp_path / "single", progress=False)
    # the eval logs differ as for any extended run: the 6-step run also evaluated at its last step
    assert _differences(tmp_path / "single", member, 9, logs=("log.jsonl", "log.csv")) == []


# --------------------------------------------------------------------------- kill and resume

_CHILD = r"""
import json, sys, time
from gracheck.train import TrainConfig
from gracheck.ensemble import train_ensemble
cfgs = [TrainConfig.from_dict(c) for c in json.loads(sys.argv[1])]
# slow each step down so that the parent's SIGKILL lands mid-run (the work itself is unchanged)
train_ensemble(cfgs, sys.argv[2], progress=False, callback=lambda step, metrics, run: time.sleep(0.05))
"""


def _last_logged_step(path: Path) -> int:
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return max(steps)


@pytest.mark.parametrize(
    "variants, common, kill_seed",
    [
        ([dict(model="beta-vae", beta=0.5, seed=3), dict(model="beta-vae", beta=1.0, seed=4, posterior="block-diagonal",
                                                         block=2)], {}, 21),
        pytest.param([dict(model="grae-approx", beta=0.5, seed=3), dict(model="grae-approx", beta=0.2, seed=3)], CONV,
                     22, marks=pytest.mark.slow),
    ],
    ids=["beta-vae-mlp", "grae-approx-conv"],
)
def test_sigkill_and_resume_is_bitwise_identical(tmp_path, variants, common, kill_seed):
    """SIGKILL the ensemble at a random step (seeded) after its first checkpoint, resume, compare with an uninterrupted run.

    Compared bitwise: the final ensemble checkpoint (stacked weights and buffers, Adam state, every
    generator), each member's exported checkpoint and its log (no step duplicated or missing).
    """
    cfgs = _cfgs(*variants, **{**common, "steps": 30, "checkpoint_every": 5, "eval_every": 10})
    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps([c.to_dict() for c in cfgs]), str(killed)],
                             env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    target = random.Random(kill_seed).randrange(6, 27)
    log0 = killed / "models" / "000" / "log.jsonl"
    try:
        deadline = time.monotonic() + 300
        while _last_logged_step(log0) < target:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    killed_at = _last_logged_step(log0)
    assert target <= killed_at < 30 and not (killed / "result.json").exists()

    res = train_ensemble(cfgs, killed, resume=True, progress=False)
    print(f"SIGKILL after logged step {killed_at}; resumed from checkpoint step {res.resumed_from}")
    assert res.resumed_from is not None and 5 <= res.resumed_from <= killed_at
    ref = train_ensemble(cfgs, tmp_path / "ref", progress=False)
    a, b = _ckpt(killed, 30), _ckpt(tmp_path / "ref", 30)
    assert [k for k in a["net"] if not torch.equal(a["net"][k], b["net"][k])] == []
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert all(torch.equal(x, y) for x, y in zip(a["rng"], b["rng"]))
    for m in range(len(cfgs)):
        km, rm = killed / "models" / f"{m:03d}", tmp_path / "ref" / "models" / f"{m:03d}"
        assert [r["step"] for r in read_log(km / "log.jsonl")] == list(range(1, 31))
        assert [r["step"] for r in read_log(km / "log.csv")] == list(range(1, 31))
        assert _rows(km / "log.jsonl") == _rows(rm / "log.jsonl")
        assert _rows(km / "eval.jsonl") == _rows(rm / "eval.jsonl")
        ma, mb = _ckpt(km, 30), _ckpt(rm, 30)
        assert all(torch.equal(ma["model"][k], mb["model"][k]) for k in ma["model"])
    run, step = load_ensemble_checkpoint(killed)
    assert step == 30 and run.step_index == 30


# --------------------------------------------------------------------------- folders, resume rules, divergence


def test_folder_rules_and_extension(tmp_path):
    """Fresh runs refuse used folders, resume refuses other configs (naming the fields), a complete ensemble
    resumes as a no-op, and extending ``steps`` continues to bitwise the longer uninterrupted run."""
    cfgs = _cfgs(dict(model="ae", beta=0.5, seed=3), dict(model="ae", beta=0.5, seed=4), steps=4, eval_every=0,
                 checkpoint_every=2)
    out = tmp_path / "ens"
    train_ensemble(cfgs, out, progress=False)
    with pytest.raises(FileExistsError, match="out_dir"):
        train_ensemble(cfgs, out, progress=False)
    other = _cfgs(dict(model="ae", beta=0.5, seed=3), dict(model="ae", beta=0.5, seed=5), steps=4, eval_every=0,
                  checkpoint_every=2)
    with pytest.raises(ConfigMismatchError, match="seed"):
        train_ensemble(other, out, resume=True, progress=False)
    mtime = (out / "ckpt-00000004.pt").stat().st_mtime_ns
    again = train_ensemble(cfgs, out, resume=True, progress=False)  # complete: nothing runs
    assert again.step == 4 and (out / "ckpt-00000004.pt").stat().st_mtime_ns == mtime
    assert len(read_log(out / "models" / "000" / "log.jsonl")) == 4
    # a model folder that holds a run this ensemble did not write is refused
    train(cfgs[0], tmp_path / "alone", progress=False)
    with pytest.raises(FileExistsError, match=r"model_dirs\[0\]"):
        train_ensemble(cfgs, tmp_path / "ens2", model_dirs=[tmp_path / "alone", tmp_path / "b"], progress=False)
    # extension: 4 → 7 steps equals a 7-step run
    longer = [TrainConfig(**{**c.to_dict(), "steps": 7}) for c in cfgs]
    ext = train_ensemble(longer, out, resume=True, progress=False)
    assert ext.resumed_from == 4 and ext.step == 7
    ref = train_ensemble(longer, tmp_path / "ref", progress=False)
    a, b = _ckpt(out, 7), _ckpt(tmp_path / "ref", 7)
    assert all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"])
    assert [r["step"] for r in read_log(out / "models" / "001" / "log.csv")] == list(range(1, 8))
    assert json.loads((out / "models" / "001" / "result.json").read_text())["step"] == 7
    assert ref.results[1].train_metrics == ext.results[1].train_metrics


def test_corrupt_newest_checkpoint_falls_back(tmp_path):
    """A truncated newest ensemble checkpoint is named in a warning, set aside, and the previous one is used."""
    cfgs = _cfgs(dict(model="beta-vae", beta=0.5, seed=3), dict(model="beta-vae", beta=0.2, seed=3), steps=6,
                 checkpoint_every=2, eval_every=0)
    out = tmp_path / "ens"
    train_ensemble(cfgs, out, progress=False)
    good = _ckpt(out, 6)["net"]
    ck = out / "ckpt-00000006.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    (out / "result.json").unlink()
    with pytest.warns(RuntimeWarning, match="(?s)ckpt-00000006.pt.*falling back"):
        res = train_ensemble(cfgs, out, resume=True, progress=False)
    assert res.resumed_from == 4
    assert all(torch.equal(_ckpt(out, 6)["net"][k], good[k]) for k in good)
    assert (out / "ckpt-00000006.pt.corrupt").exists()


def test_divergence_names_the_model_step_and_term(tmp_path):
    """A NaN planted in model 1's last decoder bias after step 3 stops the ensemble at step 4, naming model 1."""

    def plant(step, metrics, run):
        if step == 3:
            with torch.no_grad():
                last = [layer for layer in run.net.dec if hasattr(layer, "bias")][-1]  # the Linear before the sigmoid
                last.bias[1].fill_(float("nan"))

    cfgs = _cfgs(dict(model="grae-approx", beta=0.5, seed=3), dict(model="grae-approx", beta=0.2, seed=4), steps=10,
                 checkpoint_every=2, eval_every=0)
    with pytest.raises(EnsembleDiverged) as ei:
        train_ensemble(cfgs, tmp_path / "nan", progress=False, callback=plant)
    e = ei.value
    assert isinstance(e, TrainingDiverged)
    assert e.step == 4 and e.model == 1 and e.term == "decoder output"
    assert "model 1" in str(e) and "step 4" in str(e) and e.checkpoint.endswith("ckpt-00000002.pt")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, field",
    [(dict(lr=2e-3), "lr"), (dict(model="grae-approx"), "model"), (dict(hidden=(32,)), "hidden"),
     (dict(steps=13), "steps"), (dict(batch_size=16), "batch_size"), (dict(arch="conv"), "arch"),
     (dict(latent_dim=5), "latent_dim"), (dict(obs="bernoulli"), "obs"), (dict(train_limit=1000), "train_limit")],
)
def test_configs_that_cannot_share_a_computation_name_the_field(change, field):
    a = TrainConfig(**{**FAST, "model": "beta-vae"})
    b = TrainConfig(**{**FAST, "model": "beta-vae", **change})
    with pytest.raises(ValueError, match=rf"^{field}: "):
        check_configs([a, b])
    with pytest.raises(ValueError, match=rf"^{field}: "):
        train_ensemble([a, b], "/nonexistent/never-written", progress=False)


def test_other_bad_input(tmp_path):
    a = TrainConfig(**{**FAST, "model": "beta-vae"})
    b = TrainConfig(**{**FAST, "model": "beta-vae", "beta": 0.3, "seed": 9, "posterior": "full"})
    assert check_configs([a, b]) == (a, b)  # beta, posterior, block and seed may differ
    with pytest.raises(TypeError, match="configs"):
        check_configs(a)
    with pytest.raises(TypeError, match=r"configs\[1\]"):
        check_configs([a, a.to_dict()])
    with pytest.raises(ValueError, match="configs"):
        check_configs([])
    with pytest.raises(ValueError, match="conv"):
        train_ensemble([a, b], tmp_path / "x", conv="fused", progress=False)
    with pytest.raises(ValueError, match="model_dirs"):
        train_ensemble([a, b], tmp_path / "x", model_dirs=[tmp_path / "only-one"], progress=False)
    with pytest.raises(ValueError, match="model_dirs"):
        train_ensemble([a, b], tmp_path / "x", model_dirs=[tmp_path / "same", tmp_path / "same"], progress=False)
    with pytest.raises(ValueError, match="steps"):
        time_steps([a], 0)
    assert not (tmp_path / "x").exists()  # nothing was written by a refused call


# --------------------------------------------------------------------------- the tangent passes and the conv modes


def test_decoder_columns_match_the_engine_routes():
    """The ensemble's stacked chain route against the engine's three routes on each member's own decoder.

    float32: bitwise the engine's "chain" route (the route the trainer takes). float64: the "forward-ad"
    (dual tensors) and "vmap" (torch.func) routes, different computations, agree to float64-exact.
    Training-mode BatchNorm in the conv decoder (batch statistics held constant for the tangents).
    """
    for kw in (dict(FAST, model="grae-approx"), dict(FAST, model="grae-approx", **CONV)):
        cfgs = [TrainConfig(**{**kw, "seed": s, "beta": b}) for s, b in ((3, 0.5), (4, 0.2))]
        for dtype in (torch.float32, torch.float64):
            members = [build_model(c).to(dtype).train() for c in cfgs]
            ens = Ensemble([build_model(c) for c in cfgs]).to(dtype).train()
            g = torch.Generator().manual_seed(0)
            B, d, k = 8, cfgs[0].latent_dim, 2
            z = torch.randn(2, B, d, generator=g, dtype=dtype)
            cols = torch.stack([torch.rand(B, d, generator=g).argsort(1)[:, :k] for _ in range(2)])
            out, J = ens.decoder_columns(z, torch.nn.functional.one_hot(cols, d).to(dtype))
            for m, dec in enumerate(m_.decoder for m_ in members):
                methods = ["chain"] if dtype == torch.float32 else ["forward-ad", "vmap"]
                for method in methods:
                    gm, Jm = gc.jacobian_columns(dec, z[m], cols[m], return_output=True, method=method)
                    if method == "chain":
                        assert torch.equal(gm, out[m]) and torch.equal(Jm, J[m]), (kw["arch"], m)
                    else:
                        t = tol("float64-exact")
                        torch.testing.assert_close(Jm, J[m], atol=t.atol, rtol=t.rtol)
                        torch.testing.assert_close(gm, out[m], atol=t.atol, rtol=t.rtol)


@pytest.mark.slow
def test_grouped_convolutions_agree_to_the_stated_tolerance():
    """conv="grouped" (one grouped convolution per layer, the CUDA default) against conv="per-model" on CPU,
    float32, one step from the same state: not bitwise (oneDNN sums a grouped kernel's windows in another
    order), within ``ensemble-grouped-conv-float32``; terms relative to max(|value|, 1), gradients relative
    to the largest gradient entry."""
    t = tol("ensemble-grouped-conv-float32")
    for model in ("beta-vae", "grae-approx"):
        cfgs = _cfgs(dict(model=model, beta=0.5, seed=3), dict(model=model, beta=0.2, seed=4), **CONV)
        got = {}
        for conv in ("per-model", "grouped"):
            run = EnsembleRun(cfgs, conv=conv)
            metrics = run.step()
            grads = {n: p.grad.clone() for n, p in run.net.named_parameters()}
            got[conv] = (metrics, grads)
        (ma, ga), (mb, gb) = got["per-model"], got["grouped"]
        for a, b in zip(ma, mb):
            for key in a:
                assert abs(a[key] - b[key]) <= t.atol + t.rtol * max(abs(a[key]), 1.0), (model, key)
        scale = max(float(g.abs().max()) for g in ga.values())
        worst = max(float((ga[n] - gb[n]).abs().max()) for n in ga) / scale
        assert worst <= t.rtol, (model, worst)


# --------------------------------------------------------------------------- cost model


def test_cost_model_counts_and_times_steps():
    """step_flops scales with the number of identical-shape models; time_steps reports a measured step time."""
    one = _cfgs(dict(model="grae-approx", beta=0.5, seed=3))
    two = _cfgs(dict(model="grae-approx", beta=0.5, seed=3), dict(model="grae-approx", beta=0.2, seed=4))
    f1, f2 = step_flops(one), step_flops(two)
    assert f1 > 0 and f2 == 2 * f1
    r = time_steps(two, 2, warmup=1)
    assert r["models"] == 2 and r["steps"] == 2 and r["flops_per_step"] == f2
    assert 0 < r["seconds_per_step_min"] <= r["seconds_per_step"] <= r["seconds_per_step_max"]
    assert r["conv"] == "per-model" and r["device"] == "cpu"


@pytest.mark.parametrize("model, common", [("beta-vae", {}), ("grae-approx", CONV)], ids=["beta-vae-mlp", "grae-approx-conv"])
def test_autocast_path_matches_float32(model, common):
    """The AMP path (bf16 autocast around the networks, objectives in float32), exercised with CPU autocast.

    On CUDA the ensemble runs this path with device type "cuda". Compared: one step's logged terms from
    the bf16-autocast networks against the float32 networks (same weights, same random streams): agreement
    to bf16 accuracy (3% of max(|value|, 1); bf16 keeps 8 bits of mantissa, as in test_train), float32
    gradients reaching every stacked parameter through the stacked GEMMs and the chain route's tangents.
    """
    cfgs = _cfgs(dict(model=model, beta=0.5, seed=3), dict(model=model, beta=0.2, seed=4), **common)
    ref, amp = EnsembleRun(cfgs), EnsembleRun(cfgs)
    amp.amp = "cpu"
    a, b = ref.step(), amp.step()
    for ra, rb in zip(a, b):
        for key in ra:
            assert abs(ra[key] - rb[key]) <= 0.03 * max(abs(ra[key]), 1.0), (key, ra[key], rb[key])
    for p in amp.net.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
        assert bool(torch.isfinite(p.grad).all())
