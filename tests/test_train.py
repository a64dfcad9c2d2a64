"""The trainer (gracheck.train): learning, CLI, kill-and-resume, divergence, config and checkpoint errors.

All runs use real MNIST (the shipped IDX files) at a reduced scale: an MLP or a width-reduced
Appendix D conv net, a few dozen steps, 1 CPU thread.
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

from gracheck.train import (
    CheckpointError,
    ConfigMismatchError,
    TrainConfig,
    TrainingDiverged,
    load_checkpoint,
    main,
    read_log,
    train,
)

REPO = Path(__file__).resolve().parents[1]

# A small, fast run: MLP 784-64-4, batch 32, 2,000 training images.
FAST = dict(dataset="mnist", arch="mlp", hidden=(64,), latent_dim=4, beta=0.5, batch_size=32, eval_size=64,
            train_limit=2000, num_threads=1, seed=3)


def _fast(**kw) -> TrainConfig:
    return TrainConfig(**{**FAST, **kw})


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _states_equal(a: dict, b: dict) -> list[str]:
    """Names of entries that are not bitwise equal."""
    return [k for k in a if not torch.equal(a[k], b[k])]


def _last_logged_step(path: Path) -> int:
    """Largest step in a log.jsonl being written by another process (a half-written last line is skipped)."""
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return max(steps)


def _ckpt(out: Path, step: int) -> dict:
    return torch.load(out / f"ckpt-{step:08d}.pt", weights_only=True)


# --------------------------------------------------------------------------- learning


def test_short_cpu_run_improves_objective(tmp_path):
    """60 β-VAE steps of the Appendix D MNIST nets at width 1/16: the held-out objective rises.

    Compared: the held-out β-VAE objective (eval-mode BatchNorm, same 256 test images, same
    posterior-sample seed) of the initial model and of the trained one. At initialisation the
    sigmoid decoder outputs ≈ 0.5 everywhere; fitting the mostly-black MNIST background alone is
    worth tens of nats per image under N(x; g, I). We require a gain of at least 1% of the initial
    −objective, and the training log's last 10 steps to average above its first 10.
    """
    cfg = TrainConfig(dataset="mnist", model="beta-vae", latent_dim=8, beta=1.0, width=1 / 16, batch_size=32,
                      steps=60, eval_every=60, eval_size=256, checkpoint_every=0, num_threads=1, seed=0,
                      train_limit=5000)
    res = train(cfg, tmp_path / "run", progress=False)
    ev = read_log(tmp_path / "run" / "eval.jsonl")
    assert [r["step"] for r in ev] == [0, 60]
    gain = ev[1]["objective"] - ev[0]["objective"]
    assert gain > 0.01 * abs(ev[0]["objective"]), (ev[0], ev[1])
    rows = read_log(tmp_path / "run" / "log.csv")
    assert len(rows) == 60
    first = sum(r["objective"] for r in rows[:10]) / 10
    last = sum(r["objective"] for r in rows[-10:]) / 10
    assert last > first, (first, last)
    for r in rows:  # every term is logged and the identity objective = log_px − β·kl holds
        assert r["objective"] == pytest.approx(r["log_px"] - cfg.beta * r["kl"], rel=1e-5, abs=1e-3)
    assert res.eval_metrics["objective"] == pytest.approx(ev[1]["objective"])


# --------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_acceptance_command_and_resume(tmp_path, capsys):
    """The issue's command (steps/width reduced) leaves config, logs, checkpoints; --resume on it is a no-op."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "gracheck.train", "--dataset", "mnist", "--model", "grae-approx", "--beta", "0.1",
           "--latent-dim", "12", "--steps", "20", "--checkpoint-every", "5", "--out", str(out),
           "--width", "0.0625", "--batch-size", "16", "--eval-every", "10", "--eval-size", "32",
           "--num-threads", "1", "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["step"] == 20
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "grae-approx" and cfg["beta"] == 0.1 and cfg["latent_dim"] == 12 and cfg["steps"] == 20
    ckpts = sorted(f.name for f in out.glob("ckpt-*.pt"))
    assert ckpts == ["ckpt-00000010.pt", "ckpt-00000015.pt", "ckpt-00000020.pt"]  # keep_checkpoints=3
    assert (out / "latest").read_text().strip() == "ckpt-00000020.pt"
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert set(rows[0]) == {"step", "objective", "log_px", "prior", "regularizer", "loss", "grad_norm", "lr", "seconds"}
    assert [r["step"] for r in read_log(out / "eval.jsonl")] == [0, 10, 20]
    mtime = (out / "ckpt-00000020.pt").stat().st_mtime_ns

    # the same command with --resume on the complete run: no training, no new rows, same checkpoint
    # (in-process through main(), the function behind `python -m gracheck.train`)
    t0 = time.perf_counter()
    assert main(cmd[3:] + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 20
    assert (out / "ckpt-00000020.pt").stat().st_mtime_ns == mtime
    assert len(read_log(out / "log.csv")) == 20
    assert time.perf_counter() - t0 < 30
    # with --resume, options not given come from OUT/config.json; a given option that differs is refused
    assert main(["--out", str(out), "--resume", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["--out", str(out), "--resume", "--no-progress", "--beta", "0.2"]) == 2
    assert "beta" in capsys.readouterr().err

    with pytest.raises(SystemExit) as ei:  # --help names the options
        main(["--help"])
    assert ei.value.code == 0
    helptext = capsys.readouterr().out
    assert "--grae-k" in helptext and "--resume" in helptext and "--latent-dim" in helptext


# --------------------------------------------------------------------------- kill and resume

_CHILD = r"""
import json, sys, time
from gracheck.train import TrainConfig, train
cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
# slow each step down so that the parent's SIGKILL lands mid-run (the work itself is unchanged)
train(cfg, sys.argv[2], progress=False, callback=lambda step, metrics, model: time.sleep(0.04))
"""


@pytest.mark.parametrize(
    "kw, kill_seed",
    [
        (dict(model="beta-vae"), 11),  # posterior samples from the checkpointed generator
        pytest.param(  # Jacobian columns from the generator, BatchNorm running statistics in the state
            dict(model="grae-approx", arch="conv", width=1 / 16, batch_size=16, latent_dim=6), 12, marks=pytest.mark.slow
        ),
    ],
    ids=["beta-vae-mlp", "grae-approx-conv"],
)
def test_sigkill_and_resume_is_bitwise_identical(tmp_path, kw, kill_seed):
    """SIGKILL at a random step (seeded) after the first checkpoint, resume, and compare with an uninterrupted run.

    Compared bitwise (torch.equal): every parameter and buffer of the final model and every
    Adam state tensor, between (a) a run killed with SIGKILL in a subprocess and resumed here,
    and (b) the same config run uninterrupted. Also the resumed log has no duplicated step.
    """
    cfg = _fast(steps=40, checkpoint_every=5, eval_every=20, **kw)
    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg.to_dict()), str(killed)],
                             env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    target = random.Random(kill_seed).randrange(6, 34)  # the step after which to kill (checkpoints every 5)
    try:
        deadline = time.monotonic() + 120
        while _last_logged_step(killed / "log.jsonl") < target:
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
    killed_at = max(r["step"] for r in read_log(killed / "log.jsonl"))
    assert target <= killed_at < 40, (target, killed_at)
    assert not (killed / "result.json").exists()

    res = train(cfg, killed, resume=True, progress=False)
    print(f"SIGKILL after logged step {killed_at}; resumed from checkpoint step {res.resumed_from}")
    assert res.resumed_from is not None and 5 <= res.resumed_from <= killed_at
    if killed_at % 5:  # log rows past the checkpoint existed and were dropped, not duplicated
        assert res.resumed_from < killed_at
    ref = train(cfg, tmp_path / "ref", progress=False)
    a, b = _ckpt(killed, 40), _ckpt(tmp_path / "ref", 40)
    assert _states_equal(a["model"], b["model"]) == []
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert _states_equal(sa[i], sb[i]) == [], i
    assert torch.equal(a["rng"]["noise"][0], b["rng"]["noise"][0])
    steps = [r["step"] for r in read_log(killed / "log.jsonl")]
    assert steps == list(range(1, 41))
    assert [r["step"] for r in read_log(killed / "log.csv")] == steps
    ref_rows, res_rows = read_log(tmp_path / "ref" / "log.csv"), read_log(killed / "log.csv")
    assert [r["objective"] for r in ref_rows] == [r["objective"] for r in res_rows]
    assert res.eval_metrics == ref.eval_metrics


# --------------------------------------------------------------------------- divergence


def test_nan_in_decoder_output_names_step_and_term(tmp_path):
    """A NaN planted in the decoder's last bias after step 3 stops the run at step 4, naming the decoder output."""

    def plant(step, metrics, model):
        if step == 3:
            with torch.no_grad():
                model.decoder.body[-2].bias.fill_(float("nan"))

    cfg = _fast(model="grae-approx", steps=10, checkpoint_every=2, eval_every=0)
    with pytest.raises(TrainingDiverged) as ei:
        train(cfg, tmp_path / "nan", progress=False, callback=plant)
    assert ei.value.step == 4 and ei.value.term == "decoder output"
    assert "step 4" in str(ei.value) and "decoder output" in str(ei.value)
    assert ei.value.checkpoint.endswith("ckpt-00000002.pt")
    # the last good checkpoint is intact and finite
    model, _, step = load_checkpoint(tmp_path / "nan")
    assert step == 2 and all(torch.isfinite(p).all() for p in model.parameters())


def test_inf_kl_term_is_named(tmp_path):
    """An Inf planted in the scale head's bias makes the posterior scale (hence the KL) non-finite."""

    def plant(step, metrics, model):
        if step == 2:
            with torch.no_grad():
                model.encoder.head.scale.bias[0] = float("inf")

    with pytest.raises(TrainingDiverged) as ei:
        train(_fast(model="beta-vae", steps=6, eval_every=0), tmp_path / "inf", progress=False, callback=plant)
    assert ei.value.step == 3 and ei.value.term == "encoder scale_tril", str(ei.value)


def test_huge_learning_rate_diverges_with_a_named_term(tmp_path):
    """lr = 1e30: Adam moves every weight by ~1e30 in step 1, so step 2 overflows somewhere; the error says where."""
    with pytest.raises(TrainingDiverged) as ei:
        train(_fast(model="ae", steps=10, lr=1e30, eval_every=0), tmp_path / "lr", progress=False)
    assert ei.value.step == 2
    assert ei.value.term in ("encoder mean", "decoder output", "term 'objective'", "term 'log_px'")
    assert f"step {ei.value.step}" in str(ei.value) and ei.value.term in str(ei.value)


# --------------------------------------------------------------------------- config and checkpoint errors


def test_resume_with_a_different_config_names_the_fields(tmp_path):
    out = tmp_path / "run"
    train(_fast(model="ae", steps=4, eval_every=0), out, progress=False)
    with pytest.raises(ConfigMismatchError) as ei:
        train(_fast(model="ae", steps=4, eval_every=0, lr=2e-3, seed=4), out, resume=True, progress=False)
    msg = str(ei.value)
    assert "lr" in msg and "seed" in msg and "0.001" in msg and "0.002" in msg
    # a fresh run into a used folder is refused too
    with pytest.raises(FileExistsError, match="resume"):
        train(_fast(model="ae", steps=4, eval_every=0), out, progress=False)
    # extending steps is allowed and continues from step 4
    res = train(_fast(model="ae", steps=6, eval_every=0), out, resume=True, progress=False)
    assert res.resumed_from == 4 and res.step == 6
    assert [r["step"] for r in read_log(out / "log.csv")] == [1, 2, 3, 4, 5, 6]


def test_corrupt_checkpoint_is_named_and_previous_one_used(tmp_path):
    out = tmp_path / "run"
    cfg = _fast(model="beta-vae", steps=6, checkpoint_every=2, eval_every=0)
    train(cfg, out, progress=False)
    # uninterrupted reference for steps 4 → 6 is the complete run itself
    good = _ckpt(out, 6)["model"]
    ck = out / "ckpt-00000006.pt"
    ck.write_bytes(ck.read_bytes()[:1000])  # truncated
    (out / "result.json").unlink()
    with pytest.raises(CheckpointError, match="ckpt-00000006.pt"):
        load_checkpoint(ck)
    with pytest.warns(RuntimeWarning, match="(?s)ckpt-00000006.pt.*falling back"):
        res = train(cfg, out, resume=True, progress=False)
    assert res.resumed_from == 4
    assert _states_equal(_ckpt(out, 6)["model"], good) == []
    assert (out / "ckpt-00000006.pt.corrupt").exists()  # set aside as evidence, not deleted
    # a file that is not a checkpoint at all
    bad = tmp_path / "not-a-ckpt.pt"
    torch.save({"hello": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="not a gracheck training checkpoint"):
        load_checkpoint(bad)


def test_load_checkpoint_round_trip(tmp_path):
    """load_checkpoint rebuilds the model from the saved config; its eval-mode output matches the trainer's eval."""
    out = tmp_path / "run"
    res = train(_fast(model="ae", steps=3, eval_every=0, eval_size=32), out, progress=False)
    model, cfg, step = load_checkpoint(out)
    assert step == 3 and cfg == res.config and not model.training
    from gracheck.data import mnist_images
    from gracheck.likelihoods import GaussianObs

    x, _ = mnist_images("test", limit=32)
    with torch.no_grad():
        lp = GaussianObs().log_prob(x, model(x)).double().mean().item()
    assert lp == pytest.approx(res.eval_metrics["log_px_at_mean"], rel=1e-6)


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(model="vae"), "model"),
        (dict(beta=0.0), "beta"),
        (dict(beta=float("nan")), "beta"),
        (dict(posterior="block-diagonal", block=None), "block"),
        (dict(steps=0), "steps"),
        (dict(grae_k=9, latent_dim=4), "grae_k"),
        (dict(device="tpu"), "device"),
        (dict(width=-1.0), "width"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{**FAST, **kw})


def test_config_json_round_trip():
    cfg = _fast(model="beta-vae", posterior="block-diagonal", block=2, hidden=(32, 16))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    "model, arch", [("beta-vae", "mlp"), ("grae", "mlp"), ("ae", "mlp"), ("grae-approx", "conv")]
)
def test_autocast_path_matches_float32(model, arch):
    """The AMP path (bf16 autocast around the networks, objectives in float32), exercised with CPU autocast.

    On CUDA the trainer runs exactly this module with device_type "cuda". Compared: every term from
    the bf16-autocast networks vs the float32 networks (same weights, same generator seed): float32
    outputs, agreement to bf16 accuracy (3% of max(|value|, 1); bf16 keeps 8 bits of mantissa), and
    a gradient reaching every parameter through the autocast JVPs.
    """
    from gracheck.train import _build, _make_obs, _Objective

    cfg = TrainConfig(model=model, latent_dim=4, width=1 / 32, batch_size=8, beta=0.5, arch=arch, hidden=(32,))
    net = _build(cfg)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t32 = _Objective(net, cfg, _make_obs(cfg), None)(x, torch.Generator().manual_seed(1))
    t16 = _Objective(net, cfg, _make_obs(cfg), "cpu")(x, torch.Generator().manual_seed(1))
    assert t16.keys() == t32.keys()
    for k, v in t32.items():
        v = v.detach()
        assert t16[k].dtype == torch.float32, k
        tol = 0.03 * max(float(v.abs().max()), 1.0)
        assert float((t16[k].detach() - v).abs().max()) <= tol, k
    (-t16["objective"].mean()).backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())


def test_slim_checkpoint_keeps_weights_and_refuses_extension(tmp_path):
    """slim_checkpoint drops Adam's state and older checkpoints: the model loads bitwise equal, the
    file shrinks, a resume of the finished run is a no-op, extending it is refused and writes nothing."""
    from gracheck.train import slim_checkpoint

    cfg = _fast(steps=6, checkpoint_every=3)
    out = tmp_path / "run"
    train(cfg, out, progress=False)
    before, _, _ = load_checkpoint(out)
    size0 = (out / "ckpt-00000006.pt").stat().st_size
    path = slim_checkpoint(out)
    assert path.name == "ckpt-00000006.pt" and sorted(p.name for p in out.glob("ckpt-*.pt")) == [path.name]
    assert path.stat().st_size < 0.6 * size0  # Adam's two moments are gone
    after, cfg2, step = load_checkpoint(out)
    assert step == 6 and _states_equal(before.state_dict(), after.state_dict()) == []
    assert train(cfg, out, resume=True, progress=False).step == 6  # finished: no-op
    saved = (out / "config.json").read_text()
    with pytest.raises(ValueError, match="slimmed"):
        train(_fast(steps=9, checkpoint_every=3), out, resume=True, progress=False)
    assert (out / "config.json").read_text() == saved
    assert slim_checkpoint(out) == path  # idempotent
    with pytest.raises(FileNotFoundError, match="out_dir"):
        slim_checkpoint(tmp_path / "empty")
