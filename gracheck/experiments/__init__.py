"""One script per empirical claim of the paper; see :mod:`gracheck.experiments._common`."""

from gracheck.experiments._common import (
    EXPERIMENT_MODULES,
    SCALES,
    ExperimentResult,
    Metric,
    run_experiment,
)

__all__ = ["EXPERIMENT_MODULES", "SCALES", "ExperimentResult", "Metric", "run_experiment"]
