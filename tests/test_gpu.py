"""CUDA paths: the trainer with bf16 autocast, and the Jacobian engine on the GPU against the CPU.

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
