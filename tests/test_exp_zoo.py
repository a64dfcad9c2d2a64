"""The experiments' model cache (gracheck.experiments._zoo): grids trained as ensembles into the per-config folders.

The reference for a grid is the one-at-a-time route, :func:`_zoo.trained` on each config alone (gracheck.train.train);
an ensemble member must be bitwise that model, so a cache filled by either route serves the other and the cache key
(the config) needs no change. Tiny MNIST MLPs, a few steps, one thread.
"""

from __future__ import annotations

import json

import pytest
import torch

from gracheck.experiments import _zoo
from gracheck.train import TrainConfig

TINY = dict(dataset="mnist", arch="mlp", hidden=(32,), latent_dim=4, batch_size=32, eval_size=64, train_limit=1000,
            num_threads=1, steps=8)


def _cfg(**kw) -> TrainConfig:
    return _zoo.train_config(**{**TINY, **kw})


def _grid() -> list[TrainConfig]:
    return [_cfg(beta=0.5), _cfg(beta=1.0, posterior="block-diagonal", block=2), _cfg(beta=0.3, seed=1),
            _cfg(model="grae-approx", beta=0.5), _cfg(model="grae-approx", beta=1.0)]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRACHECK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _weights(cfg):
    model, res = _zoo.trained(cfg)
    return {k: v.clone() for k, v in model.state_dict().items()}, res


def test_groups_follow_what_may_differ_in_one_ensemble(cache):
    cfgs = _grid() + [_cfg(beta=0.5), _cfg(beta=0.5, lr=3e-3)]
    assert _zoo.grid_groups(cfgs) == [[0, 1, 2], [3, 4], [6]]  # index 5 repeats 0; lr cannot vary inside an ensemble
    with pytest.raises(TypeError, match=r"configs\[1\]"):
        _zoo.grid_groups([cfgs[0], "beta=1"])
    with pytest.raises(ValueError, match="max_models"):
        _zoo.train_grid(cfgs, max_models=0)


def test_grid_equals_one_at_a_time_bitwise_and_keeps_the_cache_keys(cache, tmp_path, monkeypatch):
    cfgs = _grid()
    keys = [_zoo.model_dir(c).name for c in cfgs]
    lines = []
    st = _zoo.train_grid(cfgs, progress=lines.append)
    assert st["models"] == 5 and st["trained"] == 5 and st["cached"] == 0 and sorted(st["ensembles"]) == [2, 3]
    assert len(lines) == 2 and all("as one ensemble" in s for s in lines)
    assert [_zoo.model_dir(c).name for c in cfgs] == keys  # the key is the config: unchanged by the route
    assert not any((cache / "ensembles").iterdir())  # working folders removed once every member is complete
    grid = [_weights(c) for c in cfgs]
    for (w, res), c in zip(grid, cfgs):
        meta = json.loads((_zoo.model_dir(c) / "ensemble-member.json").read_text())
        assert meta["size"] in (2, 3) and res["step"] == c.steps
        ck = torch.load(next(_zoo.model_dir(c).glob("ckpt-*.pt")), weights_only=True)
        assert ck["optimizer"] is None  # slimmed like a model trained alone
    # the reference: the same configs trained one at a time into a second cache
    monkeypatch.setenv("GRACHECK_CACHE", str(tmp_path / "alone"))
    for (w, res), c in zip(grid, cfgs):
        w1, res1 = _weights(c)
        assert w.keys() == w1.keys() and all(torch.equal(w[k], w1[k]) for k in w), c
        assert res["eval_metrics"] == res1["eval_metrics"] and res["train_metrics"] == res1["train_metrics"]


def test_cached_members_are_not_retrained_and_partial_runs_resume_alone(cache):
    cfgs = _grid()[:3]
    _zoo.trained(cfgs[1])  # one member trained alone first
    mtime = (_zoo.model_dir(cfgs[1]) / "result.json").stat().st_mtime_ns
    st = _zoo.train_grid(cfgs)
    assert st["cached"] == 1 and st["trained"] == 2 and st["ensembles"] == [2]
    assert (_zoo.model_dir(cfgs[1]) / "result.json").stat().st_mtime_ns == mtime
    again = _zoo.train_grid(cfgs)
    assert again == {"models": 3, "cached": 3, "trained": 0, "ensembles": [], "seconds": 0.0}
    # a member whose folder holds an interrupted one-model run is finished alone by the trainer (resumed)
    from gracheck.train import train

    part = _cfg(beta=0.7, checkpoint_every=4)
    train(TrainConfig.from_dict({**part.to_dict(), "steps": 4}), _zoo.model_dir(part), progress=False)
    (_zoo.model_dir(part) / "result.json").unlink()  # as if killed after its step-4 checkpoint
    st = _zoo.train_grid([part, _cfg(beta=0.9, checkpoint_every=4), _cfg(beta=1.1, checkpoint_every=4)])
    assert st["trained"] == 3 and st["ensembles"] == [2]
    assert json.loads((_zoo.model_dir(part) / "result.json").read_text())["resumed_from"] == 4
