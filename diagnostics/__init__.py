"""Diagnostics, pure functions of InferenceData returning tables: convergence verdicts, posterior
predictive checks, leave-one-out at the visit and participant level, model comparison; plotting and
the HTML report are separate layers (plots.py, report.py). run.py diagnoses a whole run, with the refits
of remedies.py and the sensitivity analyses of sensitivity_analyses.py; outputs.py writes its files and
saved.py reads a saved results folder back."""

from .compare import ComparisonError, check_comparable, compare, plain_language
from .convergence import (
    DIVERGENCES_MAX,
    EBFMI_MIN,
    ESS_BULK_MIN,
    ESS_TAIL_MIN,
    MCSE_SD_RATIO_MAX,
    RHAT_MAX,
    TREEDEPTH_SATURATED_MAX,
    Verdict,
    convergence_table,
    verdict,
)
from .loo import PARETO_K_MAX, LooResult, grouped_kfold, loo_participants, loo_visits
from .ppc import REMISSION_CUTOFF, run_ppc

__all__ = [
    "DIVERGENCES_MAX",
    "EBFMI_MIN",
    "ESS_BULK_MIN",
    "ESS_TAIL_MIN",
    "MCSE_SD_RATIO_MAX",
    "PARETO_K_MAX",
    "REMISSION_CUTOFF",
    "RHAT_MAX",
    "TREEDEPTH_SATURATED_MAX",
    "ComparisonError",
    "LooResult",
    "Verdict",
    "check_comparable",
    "compare",
    "convergence_table",
    "grouped_kfold",
    "loo_participants",
    "loo_visits",
    "plain_language",
    "run_ppc",
    "verdict",
]
