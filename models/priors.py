"""Priors as data: each has a distribution, its parameters and the reason for its scale.

Default scales are fractions of the outcome's range R (60 for MADRS), so the same priors
carry over to HAM-D (R = 52) or BDI (R = 63) without edits. They are weakly informative:
wide enough to let a trial of ~250 people dominate, narrow enough that prior predictive
trajectories stay on the scale.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pymc as pm


@dataclass(frozen=True)
class Prior:
    dist: str  # "Normal", "HalfNormal", "ZeroSumNormal", "LKJ", "Exponential", "Gamma"
    params: dict
    reason: str

    def describe(self) -> str:
        args = ", ".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.dist}({args})"


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def scaled_defaults(score_min: float, score_max: float) -> dict[str, Prior]:
    """Default priors for the trajectory models of an outcome with range [score_min, score_max]."""
    r = float(score_max - score_min)
    mid = float(score_min + r / 2)
    return {
        "intercept": Prior("Normal", {"mu": mid, "sigma": 0.25 * r}, "mean baseline score: centred mid-scale, +-2 SD spans the whole scale"),
        "time_change": Prior("Normal", {"mu": 0.0, "sigma": 0.25 * r}, "placebo change per phase: changes of half the scale are plausible a priori"),
        "nac_change": Prior("Normal", {"mu": 0.0, "sigma": 0.1 * r}, "NAC-placebo difference per phase: 6 MADRS points = 1 SD; published antidepressant effects are ~2-3"),
        "marker_prognostic": Prior("Normal", {"mu": 0.0, "sigma": 0.05 * r}, "baseline score per SD of log marker: 3 MADRS points = 1 SD"),
        "marker_moderation": Prior("Normal", {"mu": 0.0, "sigma": 0.05 * r}, "change by end of treatment per SD of log marker"),
        "site": Prior("ZeroSumNormal", {"sigma": 0.05 * r}, "site offsets sum to zero (no intercept confounding); fixed scale: 3 sites cannot estimate an SD"),
        "participant_sd": Prior("HalfNormal", {"sigma": 0.15 * r}, "SD of participant baseline and of participant change (9 MADRS points)"),
        "participant_corr": Prior("LKJ", {"eta": 2.0}, "intercept-change correlation, mildly shrunk towards 0"),
        "residual_sd": Prior("HalfNormal", {"sigma": 0.1 * r}, "visit-to-visit noise; MADRS test-retest SD is ~3"),
        "student_nu": Prior("Gamma", {"alpha": 2.0, "beta": 0.1}, "Student-t degrees of freedom (robust likelihood): mean 20, allows heavy tails"),
        "marker_mean": Prior("Normal", {"mu": 0.0, "sigma": 1.0}, "standardised log marker mean"),
        "marker_sd": Prior("HalfNormal", {"sigma": 1.0}, "standardised log marker SD"),
        "marker_regression": Prior("Normal", {"mu": 0.0, "sigma": 0.5}, "regression of one standardised log marker on the others (correlation-sized)"),
    }


def resolve(defaults: dict[str, Prior], overrides: dict | None) -> dict[str, Prior]:
    """Merge user overrides (Prior objects or {'dist':..,'params':..} dicts) into the defaults."""
    out = dict(defaults)
    for key, value in (overrides or {}).items():
        if key not in out:
            raise KeyError(f"unknown prior '{key}'; known: {sorted(out)}")
        if isinstance(value, dict):
            base = out[key]
            dist_name = value.get("dist", base.dist)
            # the default's parameters are kept for the same family only (HalfNormal's sigma means nothing to Exponential)
            params = {**base.params, **value.get("params", {})} if dist_name == base.dist else dict(value.get("params", {}))
            value = Prior(dist_name, params, value.get("reason", "user override"))
        out[key] = value
    return out


def check(name: str, prior: Prior) -> None:
    """Raise ValueError when a prior's family or parameters cannot make a distribution (before any model is built)."""
    special = {"LKJ": {"eta"}, "ZeroSumNormal": {"sigma"}}  # passed to LKJCholeskyCov / ZeroSumNormal by name
    if prior.dist in special:
        unknown = set(prior.params) - special[prior.dist]
        if unknown:
            raise ValueError(f"prior '{name}': {prior.dist} takes {sorted(special[prior.dist])}, not {sorted(unknown)}")
        return
    family = getattr(pm, prior.dist, None)
    if family is None or not hasattr(family, "dist"):
        raise ValueError(f"prior '{name}': '{prior.dist}' is not a PyMC distribution")
    try:
        family.dist(**prior.params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"prior '{name}': {prior.describe()} is not a valid distribution ({exc})") from exc


def rv(name: str, prior: Prior, **kwargs):
    """Create the random variable for a Prior (inside a model context)."""
    if prior.dist == "ZeroSumNormal":
        return pm.ZeroSumNormal(name, **prior.params, **kwargs)
    dist = getattr(pm, prior.dist)
    return dist(name, **prior.params, **kwargs)


def dist(prior: Prior):
    """The unnamed distribution of a Prior (for sd_dist arguments)."""
    return getattr(pm, prior.dist).dist(**prior.params)


def to_json(priors: dict[str, Prior]) -> str:
    return json.dumps({k: asdict(v) for k, v in priors.items()}, sort_keys=True)
