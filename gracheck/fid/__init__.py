"""Distances between image distributions: Fréchet distance, KID, and the feature networks behind them.

The paper compares β-VAE and GRAE≈ by FID on CelebA samples (Fig. 4, Table 1, App. G). One module
per job, every public name re-exported here (``from gracheck import fid; fid.<name>``):

* :mod:`gracheck.fid.distance`: the Fréchet distance between Gaussians and KID, in float64;
* :mod:`gracheck.fid.inception`: the Inception-v3 of FID (local weights file only, never downloaded);
* :mod:`gracheck.fid.domain`: gracheck's own in-domain feature networks (domain Fréchet distance,
  never FID: not comparable with published FID values).
"""

from gracheck.fid import distance, domain, inception
from gracheck.fid.distance import (
    FrechetResult,
    check_images,
    fit_gaussian,
    frechet_distance,
    frechet_distance_details,
    frechet_distance_from_features,
    kid,
    kid_unbiased_mmd2,
)
from gracheck.fid.domain import (
    DOMAIN_TASKS,
    FEATURE_NET_VERSION,
    DomainFeatureNet,
    domain_features,
    domain_frechet_distance,
    state_dict_sha256,
    train_domain_features,
)
from gracheck.fid.inception import (
    INCEPTION_ENV_VAR,
    INCEPTION_FILENAME,
    INCEPTION_SHA256,
    InceptionV3Features,
    InceptionWeightsUnavailable,
    inception_features,
    inception_fid,
    inception_state_dict_spec,
    load_inception,
)

__all__ = [*distance.__all__, *inception.__all__, *domain.__all__]
