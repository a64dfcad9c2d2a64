"""gracheck: the machine-checked companion to Kumar & Poole, "On Implicit Regularization in β-VAEs" (ICML 2020).

The public API is re-exported here; submodules hold the implementations. The names are resolved on first use
(PEP 562), so ``import gracheck`` (and the pytest plugin :mod:`gracheck.testing`, which every pytest run on a
machine with gracheck installed loads) does not import torch until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gracheck.base.version import __version__

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "BernoulliObs": "gracheck.likelihoods",
    "GaussianObs": "gracheck.likelihoods",
    "GaussianPosterior": "gracheck.posteriors",
    "beta_vae_objective": "gracheck.objectives",
    "block_sizes": "gracheck.posteriors",
    "decoder_jacobian": "gracheck.autodiff",
    "gaussian_kl": "gracheck.objectives",
    "grae_approx_objective": "gracheck.objectives",
    "grae_objective": "gracheck.objectives",
    "grae_regularizer": "gracheck.objectives",
    "hadamard_bound": "gracheck.objectives",
    "jacobian_columns": "gracheck.autodiff",
    "num_params": "gracheck.posteriors",
    "optimal_covariance": "gracheck.objectives",
    "orthogonality_penalty": "gracheck.objectives",
    "scale_tril_from_params": "gracheck.posteriors",
    "taylor_gap": "gracheck.objectives",
    "taylor_objective": "gracheck.objectives",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gracheck' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from gracheck.autodiff import decoder_jacobian, jacobian_columns
    from gracheck.likelihoods import BernoulliObs, GaussianObs
    from gracheck.objectives import (
        beta_vae_objective,
        gaussian_kl,
        grae_approx_objective,
        grae_objective,
        grae_regularizer,
        hadamard_bound,
        optimal_covariance,
        orthogonality_penalty,
        taylor_gap,
        taylor_objective,
    )
    from gracheck.posteriors import GaussianPosterior, block_sizes, num_params, scale_tril_from_params
