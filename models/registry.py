"""Registry of models by name: what `fit.py --model NAME` and `--list-models` see.

Each entry holds the builder (design, priors, **options) -> pm.Model, a one-line description,
and the likelihoods it supports. Later models register here; nothing else needs to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import headline, marginal


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable
    description: str
    likelihoods: tuple[str, ...] = ("normal", "student", "censored")
    needs_biomarkers: bool = False
    options: dict = field(default_factory=dict)
    # (idata, design, mcid) -> DataFrame of extra estimate rows (use models.estimates.effect_row)
    extra_estimates: Callable | None = None


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise KeyError(f"unknown model '{name}'; registered: {', '.join(REGISTRY)} (see fit.py --list-models)")
    return REGISTRY[name]


# the plain headline model carrying its exact fast variant (participant effects integrated out, normal likelihood)
register(ModelSpec(headline.NAME, marginal.build_headline_auto, headline.DESCRIPTION, needs_biomarkers=True))

# trajectory family and the Bayesian MMRM (each module documents its maths)
from . import mmrm, moderation, null, treatment  # noqa: E402

register(ModelSpec(null.NAME, null.build_null, null.DESCRIPTION))
register(ModelSpec(treatment.NAME, treatment.build_treatment, treatment.DESCRIPTION))
register(ModelSpec(treatment.NAME_CURVED, treatment.build_treatment_curved, treatment.DESCRIPTION_CURVED, options={"curved": True}))
register(
    ModelSpec(
        moderation.NAME,
        moderation.build_moderation,
        moderation.DESCRIPTION,
        needs_biomarkers=True,
        extra_estimates=moderation.extra_estimates,
    )
)
register(ModelSpec(mmrm.NAME, mmrm.build_mmrm, mmrm.DESCRIPTION, likelihoods=mmrm.LIKELIHOODS))

# biomarker change and mediation (each module documents its maths)
from . import biomarker_change, biomarker_change_median, mediation  # noqa: E402

register(
    ModelSpec(
        biomarker_change.NAME,
        biomarker_change.build_biomarker_change,
        biomarker_change.DESCRIPTION,
        likelihoods=("normal",),
        needs_biomarkers=True,
        extra_estimates=biomarker_change.extra_estimates,
    )
)
register(
    ModelSpec(
        biomarker_change_median.NAME,
        biomarker_change_median.build_biomarker_change_median,
        biomarker_change_median.DESCRIPTION,
        likelihoods=("normal",),  # its own asymmetric-Laplace likelihood; 'normal' is the CLI default
        needs_biomarkers=True,
        extra_estimates=biomarker_change_median.extra_estimates,
    )
)
register(
    ModelSpec(
        mediation.NAME,
        mediation.build_mediation,
        mediation.DESCRIPTION,
        likelihoods=("normal", "student"),
        needs_biomarkers=True,
        extra_estimates=mediation.extra_estimates,
    )
)
