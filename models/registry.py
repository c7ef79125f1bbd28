"""Registry of models by name: what `fit.py --model NAME`, `--list-models` and `deptrial.fit_trial` see.

A `ModelSpec` says what a model is; building it for a trial gives a `BuiltModel`
(models/contract.py). To add a model: write its builder (design, priors=None, likelihood="normal")
-> BuiltModel and its default priors, and register a spec here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from . import biomarker_change, biomarker_change_median, mediation, mmrm, mmrm_retrieved, moderation, trajectory
from .contract import BuiltModel
from .design import TrialDesign
from .marker_change_block import change_data
from .priors import Prior


@dataclass(frozen=True)
class ModelSpec:
    """What a model is.

    build            (design, priors=None, likelihood="normal") -> BuiltModel; a model with `covariates` also
                     takes covariates=True (every covariate declared in dataset.toml, the default), False
                     (none) or a list of their names
    default_priors   design -> {name: Prior}: the priors a user may override, with their reasons
    likelihoods      the outcome likelihoods it supports (the first is its default)
    needs            what the data must hold beyond visit scores, in words ('' when nothing)
    check_data       design -> None, raising models.ModelDataError when the data lack what the
                     model needs; cheap, so a run refuses bad input before any fit
    comparable       its outcome is the visit scores 'y', so it is compared by LOO with the other
                     such models and gets the trajectory checks of the report
    compared         it is in the LOO comparison: its integrated densities are those of the
                     post-baseline scores given the baseline (every comparable model, and the MMRM)
    extra_estimates  (idata, design, mcid) -> DataFrame of extra estimate rows (models.effects.effect_row), or None
    estimand_kind    row of extra_estimates -> its kind of estimand (models.effects.ESTIMAND_KINDS), for extra rows
                     that do not state their estimand themselves (models.effects.with_estimands)
    score_covariance (posterior, design) -> models.contract.ImpliedCovariance: the covariance of a participant's
                     outcome over the visits that a fit implies (normal likelihood), for the analyses that condition
                     on observed visits (reference-based imputation, responders, planning); None for models
                     without visit scores
    """

    name: str
    description: str
    build: Callable[..., BuiltModel]
    default_priors: Callable[[TrialDesign], dict[str, Prior]]
    likelihoods: tuple[str, ...] = ("normal", "student", "censored")
    needs: str = ""
    check_data: Callable[[TrialDesign], object] | None = None
    comparable: bool = True
    extra_estimates: Callable | None = None
    estimand_kind: Callable | None = None
    scores_change: bool = False  # models change from baseline given the baseline score (the MMRM)
    covariates: bool = False
    score_covariance: Callable | None = None

    @property
    def compared(self) -> bool:
        return self.comparable or self.scores_change

    def require(self, design: TrialDesign) -> None:
        """Raise ModelDataError when `design` lacks what this model needs."""
        if self.check_data is not None:
            self.check_data(design)


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise KeyError(f"unknown model '{name}'; registered: {', '.join(REGISTRY)} (see fit.py --list-models)")
    return REGISTRY[name]


def fitted_model_name(idata, model: str | None = None) -> str:
    """The registered name of the model a fit (InferenceData) came from: `model` if given, else the fit's provenance,
    else read from its posterior's variables (a fit saved without provenance); ValueError when none tells."""
    if model:
        return str(model)
    name = str(idata.posterior.attrs.get("model", "")).strip('"')
    if name:
        return name
    post = idata.posterior
    if mmrm.OFF_EFFECT in post:
        return mmrm_retrieved.NAME
    if "visit_chol" in post or "visit_corr" in post:
        return mmrm.NAME
    if "nac_marker_moderation" in post:
        return "moderation"
    if "participant_sd" in post:
        if "nac_effect" not in post:
            return "null"
        if "time_curvature" in post:
            return "treatment_curved"
        return "headline" if "marker_prognostic" in post else "treatment"
    raise ValueError("cannot tell which model made this fit (no 'model' in its provenance, and its variables are no "
                     "registered model's): pass model=NAME")


def _ratio_kind(kind: str):
    return lambda row: kind


def _mediation_kind(row) -> str:
    """The kind of a mediation row (models/mediation.py extra_estimates), from its unit and its statement."""
    unit, quantity = str(row.get("unit", "")), str(row.get("quantity", ""))
    if unit == "fraction":
        return "proportion_mediated"
    if unit.startswith("ratio"):
        return "ratio_geometric"
    if unit.endswith("per log unit"):
        return "mediator_path"
    if "indirect effect" in quantity:
        return "mediation_indirect"
    if "direct effect" in quantity:
        return "mediation_direct"
    return "mediation_total"


def _needs_markers(name: str):
    return lambda design: design.require_markers(name)


def _needs_change(name: str):
    return lambda design: change_data(design, name)


# the trajectory family: one builder with switches (models/trajectory.py)
for _name, (_description, _switches) in trajectory.FAMILY.items():
    _markers = _switches.get("markers", False)
    register(
        ModelSpec(
            _name,
            _description,
            partial(trajectory.build_trajectory, name=_name, **_switches),
            trajectory.trajectory_priors,
            likelihoods=trajectory.LIKELIHOODS,
            needs="baseline biomarkers" if _markers else "",
            check_data=_needs_markers(_name) if _markers else None,
            extra_estimates=moderation.extra_estimates if _switches.get("nac_moderation") else None,
            covariates=True,
            score_covariance=trajectory.implied_covariance,
        )
    )

register(
    ModelSpec(
        mmrm.NAME,
        mmrm.DESCRIPTION,
        mmrm.build_mmrm,
        mmrm.default_priors,
        likelihoods=mmrm.LIKELIHOODS,
        check_data=mmrm.mmrm_data,
        comparable=False,  # change from baseline, not the visit scores
        scores_change=True,  # ... given the baseline: the post-baseline scores' densities, as the trajectory models'
        covariates=True,
        score_covariance=mmrm.implied_covariance,
    )
)
register(
    ModelSpec(
        mmrm_retrieved.NAME,
        mmrm_retrieved.DESCRIPTION,
        mmrm_retrieved.build_mmrm_retrieved,
        mmrm_retrieved.default_priors,
        likelihoods=mmrm_retrieved.LIKELIHOODS,
        needs="visits.csv's off_treatment column, with visits attended after stopping treatment",
        check_data=mmrm_retrieved.check_data,
        comparable=False,
        scores_change=True,
        extra_estimates=mmrm_retrieved.extra_estimates,
        covariates=True,
        score_covariance=mmrm.implied_covariance,
    )
)
register(
    ModelSpec(
        biomarker_change.NAME,
        biomarker_change.DESCRIPTION,
        biomarker_change.build_biomarker_change,
        biomarker_change.default_priors,
        likelihoods=("normal",),
        needs="biomarkers at baseline and a later week",
        check_data=_needs_change(biomarker_change.NAME),
        comparable=False,
        extra_estimates=biomarker_change.extra_estimates,
        estimand_kind=_ratio_kind("ratio_geometric"),
        covariates=True,
    )
)
register(
    ModelSpec(
        biomarker_change_median.NAME,
        biomarker_change_median.DESCRIPTION,
        biomarker_change_median.build_biomarker_change_median,
        biomarker_change_median.default_priors,
        likelihoods=("normal",),  # its own asymmetric-Laplace likelihood; 'normal' is the command line's default
        needs="biomarkers at baseline and a later week",
        check_data=_needs_change(biomarker_change_median.NAME),
        comparable=False,
        extra_estimates=biomarker_change_median.extra_estimates,
        estimand_kind=_ratio_kind("ratio_median"),
        covariates=True,
    )
)
register(
    ModelSpec(
        mediation.NAME,
        mediation.DESCRIPTION,
        mediation.build_mediation,
        mediation.default_priors,
        likelihoods=("normal", "student"),
        needs="biomarkers at baseline and a later week, scores at that week",
        check_data=mediation.mediation_data,
        comparable=False,
        extra_estimates=mediation.extra_estimates,
        estimand_kind=_mediation_kind,
        covariates=True,
    )
)
