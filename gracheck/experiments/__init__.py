"""One module per empirical claim of the paper; see :mod:`gracheck.experiments._common` (runs, results,
cache) and :mod:`gracheck.experiments._plan` (plans and budgets)."""

from gracheck.experiments._common import (
    SCALES,
    ExperimentResult,
    Metric,
    experiment_claim,
    experiment_module,
    now_utc,
    result_cached,
    run_experiment,
)
from gracheck.experiments._plan import (
    BUDGET_REASON,
    NOT_COUNTED,
    PRIORITY,
    Estimate,
    Job,
    estimate,
    plan_experiment,
)

__all__ = ["BUDGET_REASON", "NOT_COUNTED", "PRIORITY", "SCALES", "Estimate", "ExperimentResult", "Job", "Metric",
           "estimate", "experiment_claim", "experiment_module", "now_utc", "plan_experiment", "result_cached",
           "run_experiment"]
