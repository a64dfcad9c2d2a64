"""One module per empirical claim of the paper; see :mod:`gracheck.experiments._common` (runs, results,
cache) and :mod:`gracheck.experiments._plan` (plans and budgets)."""

from gracheck.experiments._common import (
    SCALES,
    ExperimentResult,
    Metric,
    config_dict,
    experiment_claim,
    experiment_module,
    now_utc,
    result_cached,
    run_experiment,
)
from gracheck.experiments._plan import (
    BUDGET_REASON,
    MARGIN,
    NOT_COUNTED,
    PRIORITY,
    SAFETY,
    Estimate,
    Job,
    estimate,
    logged_jobs,
    mnist_blocked,
    plan_experiment,
)

__all__ = ["BUDGET_REASON", "MARGIN", "NOT_COUNTED", "PRIORITY", "SAFETY", "SCALES", "Estimate", "ExperimentResult",
           "Job", "Metric", "config_dict", "estimate", "experiment_claim", "experiment_module", "logged_jobs",
           "mnist_blocked", "now_utc", "plan_experiment", "result_cached", "run_experiment"]
