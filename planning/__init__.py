"""Trial planning: simulate future trials from a fitted posterior or a design prior, analyse each fast,
and report assurance, power, type I error and interval width per design, in parallel (Dask)."""

from .analytic import analytic_power, conditional_change_sd
from .params import ParameterSet, PlanningError, Scale, design_constants, fixed_parameters, from_posterior, parse_design_prior
from .runner import PlanSpec, execute, plan, smallest_n, summarise
from .simulate import AnalysisSettings, PlannedTrial, Scenario, analyse, simulate_trials

__all__ = [
    "AnalysisSettings",
    "ParameterSet",
    "PlanSpec",
    "PlannedTrial",
    "PlanningError",
    "Scale",
    "Scenario",
    "analyse",
    "analytic_power",
    "conditional_change_sd",
    "design_constants",
    "execute",
    "fixed_parameters",
    "from_posterior",
    "parse_design_prior",
    "plan",
    "simulate_trials",
    "smallest_n",
    "summarise",
]
