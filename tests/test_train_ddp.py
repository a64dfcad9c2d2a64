"""The trainer's DDP path on CPU: 2 processes, gloo backend, launched by torch.distributed.run (torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gracheck.train import TrainConfig, load_checkpoint, read_log, train

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import json, os, sys, torch
from gracheck.train import TrainConfig, train
cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
out = sys.argv[2]
rank = int(os.environ["RANK"])
def save_final(step, metrics, model):
    if step == cfg.steps:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
res = train(cfg, out, progress=False, callback=save_final)
# one file per rank: the ranks finish together and their prints would interleave on the shared stdout
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "world_size": res.world_size, "step": res.step}, f)
"""


def _torchrun(tmp_path: Path, cfg: TrainConfig, out: Path) -> list[dict]:
    script = tmp_path / "ddp_child.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), json.dumps(cfg.to_dict()), str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_ddp_gloo_two_processes_match_single_process(tmp_path):
    """Two gloo processes: both ranks end bitwise equal, and equal (to float rounding) a 1-process run.

    GRAE on an MLP (no BatchNorm, no sampling) is deterministic given the batch, and the trainer
    gives rank r the r-th half of the same global batch a single process would see; so DDP's
    all-reduced mean gradient equals the single-process gradient up to summation order. The
    decoder Jacobian (forward-mode JVPs inside DDP's forward) must therefore be all-reduced too.
    """
    cfg = TrainConfig(dataset="mnist", model="grae", arch="mlp", hidden=(32,), latent_dim=4, beta=0.5, steps=6,
                      batch_size=16, checkpoint_every=3, eval_every=3, eval_size=32, num_threads=1, train_limit=500, seed=5)
    out = tmp_path / "ddp"
    ranks = _torchrun(tmp_path, cfg, out)
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert all(r["world_size"] == 2 and r["step"] == 6 for r in ranks)
    a, b = torch.load(out / "rank0.pt", weights_only=True), torch.load(out / "rank1.pt", weights_only=True)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    # only rank 0 wrote files: one header + 6 rows, checkpoints at 3 and 6
    assert [r["step"] for r in read_log(out / "log.csv")] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in out.glob("ckpt-*.pt")) == ["ckpt-00000003.pt", "ckpt-00000006.pt"]
    assert json.loads((out / "result.json").read_text())["world_size"] == 2

    single = train(cfg, tmp_path / "single", progress=False)
    # the DDP log holds global-batch means (all-reduced), the same numbers the single process logs
    for r_ddp, r_one in zip(read_log(out / "log.csv"), read_log(tmp_path / "single" / "log.csv")):
        for k in ("objective", "log_px", "prior", "regularizer"):
            assert r_ddp[k] == pytest.approx(r_one[k], rel=1e-5), (r_ddp["step"], k)
    m1, _, _ = load_checkpoint(tmp_path / "single")
    m0, _, _ = load_checkpoint(out)
    init = __import__("gracheck.train", fromlist=["_build"])._build(cfg).state_dict()
    for k, v in m1.state_dict().items():
        torch.testing.assert_close(m0.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    step_size = max(float((v - init[k]).abs().max()) for k, v in m1.state_dict().items())
    assert step_size > 1e-3  # training moved the weights far more than the DDP/single tolerance
    assert single.world_size == 1

    # the DDP checkpoint holds each rank's generator, and is not resumed by a different number of processes
    ck = torch.load(out / "ckpt-00000006.pt", weights_only=True)
    assert ck["world_size"] == 2 and len(ck["rng"]["noise"]) == 2
    longer = TrainConfig(**{**cfg.to_dict(), "hidden": (32,), "steps": 8})
    saved = (out / "config.json").read_text()
    with pytest.raises(ValueError, match="world_size"):
        train(longer, out, resume=True, progress=False)
    assert (out / "config.json").read_text() == saved  # a refused resume writes nothing
