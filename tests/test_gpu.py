"""CUDA paths: the trainer and the ensemble trainer with bf16 autocast, and the engine and the ensemble on the GPU against the CPU.

Every test here needs a CUDA device and skips (with the reason shown by ``pytest -ra``) when
there is none, as in CI. Select them alone with ``pytest -m gpu``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import gracheck as gc
from gracheck.train import TrainConfig, load_checkpoint, read_log, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)"),
]


def test_jacobian_engine_on_cuda_matches_cpu_in_float64():
    """All three engine routes on the GPU give the CPU's Jacobian of the same float64 decoder, and the
    parameter gradient of ‖J‖² agrees too (reverse-over-forward on the device)."""
    torch.manual_seed(0)
    dec = nn.Sequential(nn.Linear(4, 6 * 4 * 4), nn.Unflatten(1, (6, 4, 4)), nn.ELU(),
                        nn.ConvTranspose2d(6, 3, 4, stride=2, padding=1), nn.Sigmoid()).double()
    z = torch.randn(5, 4, dtype=torch.float64)
    J_cpu = gc.decoder_jacobian(dec, z)
    g_cpu = torch.autograd.grad(J_cpu.pow(2).sum(), list(dec.parameters()))
    dec_gpu = dec.cuda()
    for method in ("chain", "forward-ad", "vmap"):
        J = gc.decoder_jacobian(dec_gpu, z.cuda(), method=method)
        assert J.device.type == "cuda"
        torch.testing.assert_close(J.cpu(), J_cpu, rtol=1e-10, atol=1e-12)
        g = torch.autograd.grad(J.pow(2).sum(), list(dec_gpu.parameters()))
        for a, b in zip(g, g_cpu):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("model", ["beta-vae", "grae-approx"])
def test_cuda_training_with_autocast_improves_and_loads_on_cpu(tmp_path, model):
    """A short CUDA run (bf16 autocast for the networks, float32 objectives) raises the held-out
    objective, logs finite terms, and its checkpoint loads on a CPU-only reader."""
    cfg = TrainConfig(dataset="mnist", model=model, latent_dim=8, beta=1.0, width=1 / 8, batch_size=64,
                      steps=100, eval_every=100, eval_size=256, checkpoint_every=50, seed=0, train_limit=5000,
                      device="cuda", amp=True)
    res = train(cfg, tmp_path / "run", progress=False)
    assert res.device.startswith("cuda")
    ev = read_log(tmp_path / "run" / "eval.jsonl")
    assert [r["step"] for r in ev] == [0, 100]
    assert ev[1]["objective"] > ev[0]["objective"], (ev[0], ev[1])
    rows = read_log(tmp_path / "run" / "log.csv")
    assert len(rows) == 100 and all(torch.isfinite(torch.tensor(r["objective"])) for r in rows)
    m, cfg2, step = load_checkpoint(tmp_path / "run", map_location="cpu")
    assert step == 100 and cfg2.to_dict() == cfg.to_dict()
    assert all(p.device.type == "cpu" for p in m.parameters())


# ----------------------------------------------------------------------------- the ensemble trainer (issue 14)

_ENS = dict(dataset="mnist", latent_dim=6, batch_size=16, train_limit=256, eval_size=32, num_threads=1, steps=3,
            eval_every=0, checkpoint_every=0, amp=False)


@pytest.mark.parametrize(
    "variants, common",
    [
        ([dict(model="beta-vae", beta=0.5, seed=3), dict(model="beta-vae", beta=0.2, seed=4, posterior="block-diagonal",
                                                         block=3)], dict(arch="mlp", hidden=(32,))),
        ([dict(model="grae-approx", beta=0.5, seed=3), dict(model="grae-approx", beta=0.2, seed=4)],
         dict(arch="conv", width=1 / 16)),
    ],
    ids=["beta-vae-mlp", "grae-approx-conv"],
)
def test_ensemble_on_cuda_matches_cpu_in_float64(variants, common):
    """A tiny ensemble trained 3 steps on the GPU (grouped convolutions, batched GEMMs, cuBLAS/cuDNN) and on the
    CPU (per-model convolutions, MKL/oneDNN) in float64 from the same initial weights and the same random draws
    (the CUDA run's generators draw on the CPU): every parameter and buffer and every logged term agree to
    ``ensemble-cuda-vs-cpu-float64``."""
    from gracheck.base.tolerances import tol
    from gracheck.data import mnist_images
    from gracheck.ensemble import EnsembleRun

    cfgs = [TrainConfig(**{**_ENS, **common, **v}) for v in variants]
    x, _ = mnist_images("train", limit=256)
    held, _ = mnist_images("test", limit=32)
    cpu = EnsembleRun(cfgs, device="cpu", dtype=torch.float64, data=(x, held))
    gpu = EnsembleRun(cfgs, device="cuda", dtype=torch.float64, data=(x, held), rng_device="cpu")
    assert gpu.conv == "grouped" and cpu.conv == "per-model"
    t = tol("ensemble-cuda-vs-cpu-float64")
    for _ in range(3):
        mc, mg = cpu.step(), gpu.step()
        for a, b in zip(mc, mg):
            for k in a:
                assert abs(a[k] - b[k]) <= t.atol + t.rtol * abs(a[k]), (k, a[k], b[k])
    sc, sg = cpu.net.state_dict(), gpu.net.state_dict()
    for k in sc:
        if sc[k].is_floating_point():
            torch.testing.assert_close(sg[k].cpu(), sc[k], atol=t.atol, rtol=t.rtol, msg=k)
        else:
            assert torch.equal(sg[k].cpu(), sc[k]), k


@pytest.mark.parametrize("model", ["beta-vae", "grae-approx"])
def test_ensemble_cuda_autocast_training_improves_and_members_load_on_cpu(tmp_path, model):
    """Two models (different β and seeds) trained as one ensemble on CUDA with bf16 autocast for 100 steps: every
    logged term is finite, each model's held-out objective rises, and each member's checkpoint loads on a CPU."""
    from gracheck.ensemble import train_ensemble

    cfgs = [TrainConfig(dataset="mnist", model=model, latent_dim=8, beta=b, width=1 / 8, batch_size=64, steps=100,
                        eval_every=100, eval_size=256, checkpoint_every=50, seed=s, train_limit=5000, device="cuda",
                        amp=True) for b, s in ((1.0, 0), (0.5, 1))]
    res = train_ensemble(cfgs, tmp_path / "ens", progress=False)
    assert res.device.startswith("cuda") and res.conv == "grouped"
    for c, d in zip(cfgs, res.model_dirs):
        ev = read_log(f"{d}/eval.jsonl")
        assert [r["step"] for r in ev] == [0, 100] and ev[1]["objective"] > ev[0]["objective"], (ev[0], ev[1])
        rows = read_log(f"{d}/log.csv")
        assert len(rows) == 100 and all(torch.isfinite(torch.tensor(r["objective"])) for r in rows)
        m, cfg2, step = load_checkpoint(d, map_location="cpu")
        assert step == 100 and cfg2.to_dict() == c.to_dict() and all(p.device.type == "cpu" for p in m.parameters())
