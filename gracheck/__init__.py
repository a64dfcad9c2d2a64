"""gracheck: the machine-checked companion to Kumar & Poole, "On Implicit Regularization in β-VAEs" (ICML 2020).

The public API is re-exported here; submodules hold the implementations.
"""

__version__ = "0.1.0"

from gracheck.autodiff import JacobianRoute, decoder_jacobian, jacobian_columns, jacobian_route
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

__all__ = [
    "__version__",
    "BernoulliObs",
    "GaussianObs",
    "GaussianPosterior",
    "JacobianRoute",
    "beta_vae_objective",
    "block_sizes",
    "decoder_jacobian",
    "gaussian_kl",
    "grae_approx_objective",
    "grae_objective",
    "grae_regularizer",
    "hadamard_bound",
    "jacobian_columns",
    "jacobian_route",
    "num_params",
    "optimal_covariance",
    "orthogonality_penalty",
    "scale_tril_from_params",
    "taylor_gap",
    "taylor_objective",
]
