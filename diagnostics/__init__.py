"""Diagnostics: convergence verdicts (and later PPC and LOO), pure functions of InferenceData."""

from .convergence import DIVERGENCES_MAX, ESS_BULK_MIN, ESS_TAIL_MIN, RHAT_MAX, Verdict, convergence_table, verdict

__all__ = ["DIVERGENCES_MAX", "ESS_BULK_MIN", "ESS_TAIL_MIN", "RHAT_MAX", "Verdict", "convergence_table", "verdict"]
