"""Trial planning: simulate future trials of any number of arms from a fitted posterior or a design prior,
analyse each fast (every active arm against control), and report assurance, power, type I error (family-wise
over the arms) and interval width per design and arm, in parallel (Dask)."""

from .analysis import analyse
from .analytic import analytic_power, conditional_change_sd
from .calibration import CalibrationSettings, Thresholds
from .design import DROPOUT_MECHANISMS, AnalysisSettings, InterimSettings, PlannedTrial, Scenario
from .interim import ppos, sequential
from .mmrm_gls import mmrm_effect
from .params import (
    MMRMParameters,
    ParameterSet,
    PlanningError,
    Scale,
    design_constants,
    fixed_parameters,
    from_posterior,
    implied_mmrm,
    parse_design_prior,
    parse_design_priors,
    unit_information_sd,
)
from .runner import PlanSpec, execute, plan, smallest_n, summarise
from .simulate import calibrated_dropout, simulate_dropout, simulate_trials

__all__ = [
    "CalibrationSettings",
    "Thresholds",
    "DROPOUT_MECHANISMS",
    "InterimSettings",
    "AnalysisSettings",
    "MMRMParameters",
    "ParameterSet",
    "PlanSpec",
    "PlannedTrial",
    "PlanningError",
    "Scale",
    "Scenario",
    "analyse",
    "analytic_power",
    "calibrated_dropout",
    "conditional_change_sd",
    "design_constants",
    "execute",
    "fixed_parameters",
    "from_posterior",
    "implied_mmrm",
    "mmrm_effect",
    "parse_design_prior",
    "parse_design_priors",
    "plan",
    "ppos",
    "sequential",
    "simulate_dropout",
    "simulate_trials",
    "smallest_n",
    "summarise",
    "unit_information_sd",
]
