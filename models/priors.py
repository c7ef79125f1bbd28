"""Priors as data: each has a distribution, its parameters and the reason for its scale.

Default scales are fractions of the outcome's range R (60 for MADRS), so the same priors
carry over to HAM-D (R = 52) or BDI (R = 63) without edits. They are weakly informative:
wide enough to let a trial of ~250 people dominate, narrow enough that prior predictive
trajectories stay on the scale.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt


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


def points(fraction: float, r: float) -> str:
    """'10% of the score range (6 points)': a prior scale as its rule and its value on the data's scale."""
    return f"{fraction:.0%} of the score range ({fraction * r:.3g} points)"


def scaled_defaults(score_min: float, score_max: float) -> dict[str, Prior]:
    """Default priors for the trajectory models of an outcome with range [score_min, score_max].

    Each reason states the rule; the figures in it are computed from the range, never fixed facts
    of one scale or one trial."""
    r = float(score_max - score_min)
    mid = float(score_min + r / 2)
    return {
        "intercept": Prior("Normal", {"mu": mid, "sigma": 0.25 * r}, f"mean baseline score: centred mid-scale ({mid:.3g}), SD {points(0.25, r)}: +-2 SD spans the whole scale"),
        "time_change": Prior("Normal", {"mu": 0.0, "sigma": 0.25 * r}, f"placebo change per phase: SD {points(0.25, r)}, so changes of half the scale are plausible a priori"),
        "nac_change": Prior("Normal", {"mu": 0.0, "sigma": 0.1 * r}, f"treatment - control difference per phase: SD {points(0.1, r)}; effects of antidepressants are usually smaller"),
        "marker_prognostic": Prior("Normal", {"mu": 0.0, "sigma": 0.05 * r}, f"baseline score per SD of log marker: SD {points(0.05, r)}"),
        "marker_moderation": Prior("Normal", {"mu": 0.0, "sigma": 0.05 * r}, f"change by end of treatment per SD of log marker: SD {points(0.05, r)}"),
        "site": Prior("ZeroSumNormal", {"sigma": 0.05 * r}, f"site offsets sum to zero (no intercept confounding), SD fixed at {points(0.05, r)}: not estimated, so no result hinges on a between-site SD estimated from few sites"),
        "participant_sd": Prior("HalfNormal", {"sigma": 0.15 * r}, f"SD of participant baseline and of participant change: scale {points(0.15, r)}"),
        "participant_corr": Prior("LKJ", {"eta": 2.0}, "intercept-change correlation, mildly shrunk towards 0"),
        "residual_sd": Prior("HalfNormal", {"sigma": 0.1 * r}, f"visit-to-visit noise: scale {points(0.1, r)}, above the test-retest SD of rating scales"),
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


CONTROL_CHANGE = "control_change"  # prior key: the control arm's mean change at the end of treatment (a MAP prior)


def split_control(defaults: dict[str, Prior], overrides: dict | None) -> tuple[dict[str, Prior], Prior | None]:
    """`resolve(defaults, overrides)` and the CONTROL_CHANGE prior of the overrides (a Prior, or a dict of dist/params),
    None without one. That prior is no default: it is given by a MAP prior from historical trials (deptrial.borrowing)."""
    rest = dict(overrides or {})
    control = rest.pop(CONTROL_CHANGE, None)
    if isinstance(control, dict):
        control = Prior(control["dist"], control["params"], control.get("reason", "user override"))
    return resolve(defaults, rest), control


def mixture_prior(weights, means, sds, reason: str) -> Prior:
    """A NormalMixture Prior (sum_k w_k Normal(mu_k, sigma_k)), e.g. a MAP prior of maths/map_prior.py."""
    return Prior("NormalMixture", {"w": [float(v) for v in weights], "mu": [float(v) for v in means],
                                   "sigma": [float(v) for v in sds]}, reason)


def rv_with_element(name: str, base: Prior, element: Prior, index: int, length: int, **kwargs):
    """A vector of `length` location parameters with prior `base` elementwise, except element `index`, whose prior is
    `element` (a NormalMixture: a MAP prior on one visit's or one phase's control change). One random variable, so the
    model's parameter vector is the one `rv(name, base, ...)` makes. Its log density is PyMC's: base's elementwise, with
    element `index` replaced by the mixture's."""
    if base.dist != "Normal" or element.dist != "NormalMixture":
        raise ValueError(f"prior '{name}': a mixture on one element needs the Normal family for the others, not {base.describe()}")
    if set(base.params) - {"mu", "sigma"}:
        raise ValueError(f"prior '{name}': a mixture on one element needs Normal(mu, sigma) for the others, not {base.describe()}")
    mu = np.broadcast_to(np.asarray(base.params.get("mu", 0.0), dtype=float), (length,)).copy()
    sigma = np.broadcast_to(np.asarray(base.params.get("sigma", 1.0), dtype=float), (length,)).copy()
    w, m, s = (np.asarray(element.params[k], dtype=float) for k in ("w", "mu", "sigma"))

    def logp(value):
        lp = pm.logp(pm.Normal.dist(mu, sigma, shape=length), value)
        return pt.set_subtensor(lp[index], pm.logp(pm.NormalMixture.dist(w=w, mu=m, sigma=s), value[index]))

    def random(rng=None, size=None):
        out = rng.normal(mu, sigma, size=size)
        lead = out.shape[:-1]
        k = rng.choice(len(w), p=w / w.sum(), size=lead)
        out[..., index] = rng.normal(m[k], s[k])
        return out

    start = mu.copy()
    start[index] = float((w * m).sum() / w.sum())  # the mixture's mean

    def support_point(rv, size):
        return pt.as_tensor(start)

    return pm.CustomDist(name, logp=logp, random=random, support_point=support_point, **kwargs)


def dist(prior: Prior):
    """The unnamed distribution of a Prior (for sd_dist arguments)."""
    return getattr(pm, prior.dist).dist(**prior.params)


def to_json(priors: dict[str, Prior]) -> str:
    return json.dumps({k: asdict(v) for k, v in priors.items()}, sort_keys=True)
