"""One module per empirical claim of the paper; see :mod:`gracheck.experiments._common`."""

from gracheck.experiments._common import (
    SCALES,
    ExperimentResult,
    Metric,
    experiment_claim,
    now_utc,
    run_experiment,
)

__all__ = ["SCALES", "ExperimentResult", "Metric", "experiment_claim", "now_utc", "run_experiment"]
