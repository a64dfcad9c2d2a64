"""The trainer (gracheck.train): learning, CLI, kill-and-resume, divergence, config and checkpoint errors.

All runs use real MNIST (the shipped IDX files) at a reduced scale: an MLP or a width-reduced
Appendix D conv net, a few dozen steps, 1 CPU thread.
"""

from __future__ import annotations

import json
import os
import random
import re
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
    # result.json names the data folder and every file read with the md5 its loader verified (issue 17 item 4)
    from gracheck.data import mnist

    data = json.loads((tmp_path / "run" / "result.json").read_text())["data"]
    folder = mnist.find_mnist("train")
    assert data["folders"] == {str(folder): data["folders"][str(folder)]} and data["folders"][str(folder)]
    assert {Path(k).name: v["md5"] for k, v in data["files"].items()} == mnist.MD5
    assert res.data == data


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

    with pytest.warns(RuntimeWarning, match="stale lock"):  # the killed child's train.lock
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


# --------------------------------------------------------------------------- signals and the run-folder lock

# The CLI (gracheck.train.main) with every step slowed down by a sleep in the callback, so that a
# signal from the test lands mid-run, and (HOLD_AT) a long pause after a given step; the work of
# each step is unchanged.
_CLI_CHILD = r"""
import os, sys, time
import gracheck.train as T
hold = int(os.environ.get("HOLD_AT", "0"))
def slow(step, metrics, model):
    time.sleep(120 if step == hold else 0.03)
_train = T.train
T.train = lambda *a, **kw: _train(*a, **{**kw, "callback": slow})
sys.exit(T.main(sys.argv[1:]))
"""


def _cli_args(cfg: TrainConfig, out: Path) -> list[str]:
    args = ["--out", str(out), "--no-progress"]
    for k, v in cfg.to_dict().items():
        if v is None or v == TrainConfig.__dataclass_fields__[k].default:
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            args += [flag, ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
    return args


def _start_child(cfg: TrainConfig, out: Path, hold_at: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CLI_CHILD, *_cli_args(cfg, out)], env={**_env(), "HOLD_AT": str(hold_at)},
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(child: subprocess.Popen, log: Path, step: int) -> None:
    deadline = time.monotonic() + 120
    while _last_logged_step(log) < step:
        if child.poll() is not None:
            raise AssertionError(f"the child exited early ({child.returncode}): {child.stderr.read()}")
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.005)


_SIG_CFG = dict(model="beta-vae", steps=30, checkpoint_every=7, eval_every=15)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: _SIG_CFG trained without interruption."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(_fast(**_SIG_CFG), out, progress=False)
    return out


def _assert_same_run(out: Path, ref: Path, steps: int) -> None:
    """Bitwise: parameters and buffers, every Adam state tensor, the noise generator; each step logged once."""
    a, b = _ckpt(out, steps), _ckpt(ref, steps)
    assert _states_equal(a["model"], b["model"]) == []
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i in a["optimizer"]["state"]:
        assert _states_equal(a["optimizer"]["state"][i], b["optimizer"]["state"][i]) == [], i
    assert torch.equal(a["rng"]["noise"][0], b["rng"]["noise"][0])
    for name in ("log.jsonl", "log.csv"):
        rows, ref_rows = read_log(out / name), read_log(ref / name)
        assert [r["step"] for r in rows] == list(range(1, steps + 1)), name
        assert [r["objective"] for r in rows] == [r["objective"] for r in ref_rows], name
    assert [r["step"] for r in read_log(out / "eval.jsonl")] == [r["step"] for r in read_log(ref / "eval.jsonl")]


@pytest.mark.parametrize("sig, code, seed", [(signal.SIGTERM, 143, 21), (signal.SIGINT, 130, 22)], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_step_checkpoints_and_resume_is_bitwise_identical(tmp_path, uninterrupted, sig, code, seed):
    """Issue 17 item 3: SIGTERM exited 143 silently and Ctrl-C printed a traceback, neither writing a
    checkpoint. Now the trainer finishes the step, checkpoints, names the file in one line on stderr
    and exits 143 / 130; --resume then ends bitwise equal to an uninterrupted run."""
    cfg = _fast(**_SIG_CFG)
    out = tmp_path / "run"
    child = _start_child(cfg, out)
    target = random.Random(seed).randrange(3, 26)
    try:
        _wait_for_step(child, out / "log.jsonl", target)
        child.send_signal(sig)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    stopped = max(r["step"] for r in read_log(out / "log.jsonl"))
    assert target <= stopped < cfg.steps
    assert f"ckpt-{stopped:08d}.pt" in lines[0] and sig.name in lines[0] and "--resume" in lines[0], lines[0]
    assert (out / f"ckpt-{stopped:08d}.pt").exists() and not (out / "result.json").exists()
    assert not (out / "train.lock").exists()  # released on the way out
    res = train(cfg, out, resume=True, progress=False)
    assert res.resumed_from == stopped  # no step was lost
    _assert_same_run(out, uninterrupted, cfg.steps)


def test_second_trainer_is_refused_and_a_stale_lock_taken_over(tmp_path, uninterrupted, capsys):
    """Issue 17 item 2: a --resume started while another trainer ran on the same folder was accepted and
    both wrote into it. Now the owner holds OUT/train.lock (pid, host, start time): a second trainer
    is refused with the owner's pid (exit code 4 from the CLI); after the owner is SIGKILLed its lock
    is stale and the next trainer takes it over with a warning naming the dead pid, and the resumed
    run is bitwise the uninterrupted one."""
    from gracheck.train import FolderLocked

    cfg = _fast(**_SIG_CFG)
    out = tmp_path / "run"
    child = _start_child(cfg, out, hold_at=7)  # the owner pauses after step 7 (a checkpoint) until killed
    try:
        _wait_for_step(child, out / "log.jsonl", 7)
        deadline = time.monotonic() + 60
        while not ((out / "latest").exists() and (out / "latest").read_text().strip() == "ckpt-00000007.pt"):
            assert time.monotonic() < deadline, "no checkpoint at step 7"
            time.sleep(0.005)
        info = json.loads((out / "train.lock").read_text())
        assert info["pid"] == child.pid and {"host", "started"} <= set(info)
        with pytest.raises(FolderLocked, match=f"pid {child.pid}") as ei:
            train(cfg, out, resume=True, progress=False)
        assert ei.value.owner["pid"] == child.pid
        assert main([*_cli_args(cfg, out), "--resume"]) == 4  # the CLI: exit code 4, the owner's pid on stderr
        assert f"pid {child.pid}" in capsys.readouterr().err
        assert child.poll() is None  # the owner kept running, undisturbed
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert json.loads((out / "train.lock").read_text())["pid"] == child.pid  # left behind by the killed owner
    with pytest.warns(RuntimeWarning, match=f"stale lock.*pid {child.pid}"):
        train(cfg, out, resume=True, progress=False)
    _assert_same_run(out, uninterrupted, cfg.steps)
    assert not (out / "train.lock").exists()


def test_folder_lock_is_reusable_and_exclusive(tmp_path):
    """FolderLock is a small public class (the experiment cache can use it): exclusive (two holders in one
    process too; across processes see the test above), released on exit from the with-block, re-acquirable."""
    from gracheck.train import FolderLock, FolderLocked

    path = tmp_path / "entry.lock"
    with FolderLock(path, what="cache entry") as lock:
        assert json.loads(path.read_text())["pid"] == os.getpid() and lock.held
        with pytest.raises(FolderLocked, match=f"cache entry .* pid {os.getpid()}"):
            FolderLock(path, what="cache entry").acquire()
    assert not path.exists()
    with FolderLock(path):
        pass


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
    assert ei.value.term in ("encoder mean", "decoder output", "log_px", "objective")
    assert f"step {ei.value.step}" in str(ei.value) and ei.value.term in str(ei.value)


@pytest.mark.parametrize("model, head, term", [("beta-vae", "scale", "kl"), ("grae-approx", "mean", "prior")])
def test_the_first_nonfinite_underlying_term_is_named(tmp_path, model, head, term):
    """Issue 17 item 5: the NaN report named the derived 'objective' where the first non-finite term was
    kl or prior. A bias of 1e20 in the encoder's scale head gives a finite scale_tril whose KL overflows
    float32 (tr Σ ≈ 1e40); in the mean head a finite mean whose prior β/2‖h‖² overflows."""

    def plant(step, metrics, m):
        if step == 2:
            with torch.no_grad():
                getattr(m.encoder.head, head).bias.fill_(1e20)

    with pytest.raises(TrainingDiverged) as ei:
        train(_fast(model=model, steps=5, eval_every=0), tmp_path / "run", progress=False, callback=plant)
    assert ei.value.step == 3 and ei.value.term == term, str(ei.value)
    assert f"{term} is not finite" in str(ei.value)


def test_cli_out_folder_that_cannot_be_used_gets_a_message_and_exit_code(tmp_path, capsys):
    """Issue 17 item 7: --out whose parent is a file, or a read-only --out, ended in a traceback. Now one
    line names the folder and the problem, with exit code 5 (documented in --help)."""
    (tmp_path / "afile").write_text("x")
    base = ["--dataset", "mnist", "--arch", "mlp", "--hidden", "8", "--latent-dim", "2", "--steps", "1",
            "--no-progress"]
    assert main(["--out", str(tmp_path / "afile" / "run"), *base]) == 5
    err = capsys.readouterr().err
    assert "afile" in err and "is a file" in err and "Traceback" not in err
    assert main(["--out", str(tmp_path / "afile"), *base]) == 5
    assert "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    helptext = capsys.readouterr().out
    for code in ("130", "143", " 4 ", " 5 "):
        assert code in helptext, code
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores mode bits; an immutable folder refuses root too
        if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i: cannot make a folder read-only")
        undo = ["chattr", "-i", str(ro)]
    else:
        ro.chmod(0o555)
        undo = ["chmod", "755", str(ro)]
    try:
        for target in (ro / "run", ro):  # a new folder inside a read-only one; a read-only existing folder
            assert main(["--out", str(target), *base]) == 5
            err = capsys.readouterr().err
            assert str(ro) in err and "Traceback" not in err, err
            assert "Permission denied" in err or "not permitted" in err, err
    finally:
        subprocess.run(undo, check=True)


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


def _flip_tensor_bytes(path: Path, n: int = 100, seed: int = 0) -> str:
    """XOR ``n`` bytes in the middle of the largest tensor record of a torch zip checkpoint (the data
    itself, not the archive's structure, so torch.load still reads it). Returns the record's name."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    rng = random.Random(seed)
    for k in range(n):
        raw[start + info.file_size // 2 + k] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(raw))
    return info.filename


def test_bit_flips_inside_a_tensor_are_detected_and_the_previous_checkpoint_used(tmp_path):
    """Issue 17 item 1: 100 bytes flipped inside a stored tensor of the newest checkpoint loaded silently.
    Now each checkpoint records a SHA-256 digest of its payload; on resume the bad file is named, set
    aside (renamed, kept), the previous checkpoint is used, and the run ends bitwise equal to the
    uninterrupted one (compared with torch.equal: every parameter, buffer and Adam state tensor)."""
    out = tmp_path / "run"
    cfg = _fast(model="beta-vae", steps=6, checkpoint_every=2, eval_every=0)
    train(cfg, out, progress=False)
    good = _ckpt(out, 6)
    record = _flip_tensor_bytes(out / "ckpt-00000006.pt")
    (out / "result.json").unlink()
    flipped = torch.load(out / "ckpt-00000006.pt", weights_only=True)  # torch itself reads it without complaint
    assert _states_equal(flipped["model"], good["model"]) or any(
        not torch.equal(a, b) for a, b in zip(flipped["optimizer"]["state"].values(), good["optimizer"]["state"].values())
        for a, b in zip(a.values(), b.values())), record
    with pytest.raises(CheckpointError, match="ckpt-00000006.pt.*digest"):
        load_checkpoint(out / "ckpt-00000006.pt")
    with pytest.warns(RuntimeWarning, match="(?s)ckpt-00000006.pt.*digest.*falling back"):
        res = train(cfg, out, resume=True, progress=False)
    assert res.resumed_from == 4
    assert (out / "ckpt-00000006.pt.corrupt").exists()
    a = _ckpt(out, 6)
    assert _states_equal(a["model"], good["model"]) == []
    for i in good["optimizer"]["state"]:
        assert _states_equal(a["optimizer"]["state"][i], good["optimizer"]["state"][i]) == [], i
    assert torch.equal(a["rng"]["noise"][0], good["rng"]["noise"][0])
    assert [r["step"] for r in read_log(out / "log.jsonl")] == list(range(1, 7))


def test_checkpoint_digest_format_and_legacy_files(tmp_path):
    """The digest is recorded under "sha256" (format /2) and equals payload_digest of the loaded payload;
    a /2 file without it is refused; a /1 file (written before digests) still loads, unverified, so
    models cached by older versions stay usable."""
    from gracheck.train import CKPT_FORMAT, payload_digest

    out = tmp_path / "run"
    train(_fast(model="ae", steps=2, checkpoint_every=2, eval_every=0), out, progress=False)
    ck = _ckpt(out, 2)
    assert ck["format"] == CKPT_FORMAT and ck["sha256"] == payload_digest(ck)
    del ck["sha256"]
    torch.save(ck, tmp_path / "nodigest.pt")
    with pytest.raises(CheckpointError, match="digest is missing"):
        load_checkpoint(tmp_path / "nodigest.pt")
    ck["format"] = "gracheck-train-checkpoint/1"
    torch.save(ck, tmp_path / "legacy.pt")
    model, _, step = load_checkpoint(tmp_path / "legacy.pt")
    assert step == 2 and _states_equal(model.state_dict(), _ckpt(out, 2)["model"]) == []


def test_resume_sets_aside_only_checkpoints_that_fail_verification(tmp_path, monkeypatch):
    """Issue 17 item 2: on resume every checkpoint newer than the one resumed from was renamed .corrupt,
    readable or not. Here the newest is unreadable and the one before it readable, but (as when a
    second writer adds it while this trainer starts) only seen after the choice was made: only the
    file that failed verification is set aside."""
    import gracheck.train as T

    out = tmp_path / "run"
    cfg = _fast(model="ae", steps=8, checkpoint_every=2, eval_every=0, keep_checkpoints=4)
    train(cfg, out, progress=False)
    (out / "result.json").unlink()
    (out / "ckpt-00000008.pt").write_bytes(b"not a zip")  # fails verification
    hidden = (out / "ckpt-00000006.pt").read_bytes()  # readable, newer than the one resumed from
    (out / "ckpt-00000006.pt").unlink()
    orig = T._check_out

    def check_then_appear(*a, **kw):
        got = orig(*a, **kw)
        (out / "ckpt-00000006.pt").write_bytes(hidden)
        return got

    monkeypatch.setattr(T, "_check_out", check_then_appear)
    with pytest.warns(RuntimeWarning, match="ckpt-00000008.pt"):
        res = train(cfg, out, resume=True, progress=False)
    assert res.resumed_from == 4
    assert (out / "ckpt-00000008.pt.corrupt").exists()
    assert not (out / "ckpt-00000006.pt.corrupt").exists()


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


# --------------------------------------------------------------------------- progress (issue 18 item 5)

_PROGRESS_ARGS = ["--dataset", "mnist", "--arch", "mlp", "--hidden", "16", "--latent-dim", "2", "--eval-size", "8",
                  "--train-limit", "256", "--batch-size", "16", "--num-threads", "1", "--eval-every", "0",
                  "--checkpoint-every", "0"]
_LINE = r"gracheck\.train beta-vae mnist: step (\d+)/(\d+) \(\d+%\), loss (\S+), \S+ steps/s, (\d+|inf) s left"


def test_progress_lines_on_a_pipe_and_none_with_quiet(tmp_path, capsys, monkeypatch):
    """`python -m gracheck.train` printed nothing but a tqdm bar, useless in a log. With stderr a pipe it
    prints one flushed line per tenth of the run (step, loss as logged, steps/s, time left), no carriage
    returns; --quiet prints none (the summary on stdout stays); a line also comes whenever
    PROGRESS_SECONDS passed since the last one."""
    import gracheck.train as gtrain

    p = subprocess.run([sys.executable, "-m", "gracheck.train", *_PROGRESS_ARGS, "--steps", "20", "--out",
                        str(tmp_path / "a")], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert lines[0] == "gracheck.train beta-vae mnist: starting step 0 of 20" and "\r" not in p.stderr
    got = [re.fullmatch(_LINE, ln) for ln in lines[1:]]
    assert all(got), lines
    assert [int(m.group(1)) for m in got] == list(range(2, 21, 2))
    logged = {r["step"]: r["loss"] for r in read_log(tmp_path / "a" / "log.jsonl")}
    assert all(m.group(3) == f"{logged[int(m.group(1))]:.6g}" for m in got)

    assert main([*_PROGRESS_ARGS, "--steps", "4", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and json.loads(cap.out)["step"] == 4
    monkeypatch.setattr(gtrain, "PROGRESS_SECONDS", 0.0)  # every step is "a minute later"
    assert main([*_PROGRESS_ARGS, "--steps", "4", "--out", str(tmp_path / "b"), "--resume", "--steps", "7"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "gracheck.train beta-vae mnist: resuming at step 4 of 7"
    assert [int(re.fullmatch(_LINE, ln).group(1)) for ln in err[1:]] == [5, 6, 7]


def test_cached_model_training_says_when_it_starts_and_ends(tmp_path, monkeypatch):
    """The report's experiments say, off a terminal, when each model starts and finishes training: the model
    cache (experiments._zoo.trained) sends one line each to ``say``; a model loaded from the cache says nothing."""
    from gracheck.experiments._zoo import train_config, trained

    monkeypatch.setenv("GRACHECK_CACHE", str(tmp_path / "cache"))
    cfg = train_config(**{**FAST, "train_limit": 256, "eval_size": 8, "steps": 3})
    lines: list[str] = []
    trained(cfg, say=lines.append)
    assert len(lines) == 2 and lines[0].startswith("training beta-vae on mnist, β=0.5, d=4, seed 3: 3 steps")
    assert re.fullmatch(r"trained beta-vae on mnist, β=0\.5, d=4, seed 3 in \d+\.\d s", lines[1]), lines
    trained(cfg, say=lines.append)
    assert len(lines) == 2
