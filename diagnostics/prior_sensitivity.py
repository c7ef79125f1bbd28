"""Power-scaling sensitivity of each reported effect to the prior and to the likelihood.

Kallioinen, Paananen, Burkner and Vehtari (2023, Statistics and Computing 34:57): raise the prior (or
the likelihood) to a power alpha close to 1, reweight the posterior draws by importance sampling
(Pareto-smoothed, no refit) and measure how far each quantity's posterior moves: the derivative of
the cumulative Jensen-Shannon distance with respect to log2(alpha), by finite differences at
alpha = 1 / (1 + delta) and 1 + delta (`arviz.psens`). Reading the two together:

    prior >= 0.05 and likelihood >= 0.05   prior-data conflict: the prior and the data pull apart
    prior >= 0.05 and likelihood <  0.05   strong prior / weak likelihood: the prior does the work
    otherwise                              '-': the data dominate (or neither informs the quantity)

The log prior is computed here, per draw, from the stored posterior and the priors recorded in the
fit (`priors` attribute, models.priors.to_json), in numpy and scipy, for the named priors only: the
priors a user sets (models/priors.py), each on the variable it is stated for. Each is the density
of the values as the prior states them (no Jacobian of the sampler's transforms): a scale prior on
the SD, the LKJ prior on the correlation matrix (det(Omega)^(eta - 1)), its SDs' prior on the SDs.
PyMC's LKJCholeskyCov puts one density on the packed Cholesky factor, which differs from this by
the Jacobian of (SDs, correlations) -> factor; power-scaling the priors as stated is the question a
user can act on. Structural terms (the participant effects' normal distribution, latent biomarker
values) belong to the model, not to a prior, and are not power-scaled. The likelihood is the
outcome's pointwise log-likelihood as stored (conditional on participant effects; the MMRM's
conditional densities), without the integrated densities kept for the comparison.

Where power-scaling cannot be trusted the table says so in its own columns (so prior_sensitivity.csv
carries it): `not_power_scaled` names each prior left out and why (no posterior variable, e.g. the
site prior of a one-site trial, or no log density for its family), and `prior_pareto_k`,
`likelihood_pareto_k` give the largest Pareto k of each component's importance weights: above
0.7 (diagnostics/loo.py PARETO_K_MAX) the reweighting is unreliable, and so are that component's
sensitivities.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Mapping

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy import special, stats

from inference.marginal import INTEGRATED_NOTES
from models.priors import Prior

PRIOR_SENSITIVITY_THRESHOLD = 0.05  # arviz.psens and priorsense: at or above it the quantity is sensitive
POWER_SCALING_DELTA = 0.01  # alpha = 1 / (1 + delta) and 1 + delta
CONFLICT = "prior-data conflict"
STRONG_PRIOR = "strong prior / weak likelihood"
NO_FLAG = "-"
TABLE_COLUMNS = ["effect", "variable", "week", "marker", "prior_sensitivity", "likelihood_sensitivity", "prior_sensitive", "diagnosis",
                 "prior_pareto_k", "likelihood_pareto_k", "not_power_scaled"]

# A prior is stated for the posterior variable of its name, or else for the first of these present
PRIOR_VARIABLES = {
    "site": ("site_effect",),
    "marker_mean": ("baseline_mean",),  # the biomarker-change models' baseline block
    "marker_sd": ("baseline_sd",),
    "marker_corr": ("baseline_corr",),
}

# The reported effects (diagnostics/estimates.py and the models' extra rows), by posterior variable and the dim of its rows
EFFECT_VARIABLES = (
    ("nac_effect", "week"),
    ("placebo_change", "week"),
    ("moderation_per_doubling", "marker"),
    ("prognostic_per_doubling", "marker"),
    ("nac_moderation_per_doubling", "marker"),
    ("nac_ratio", "marker"),
    ("total_effect", None),
    ("direct_effect", None),
    ("indirect_effect_total", None),
    ("indirect_effect", "marker"),
    ("mediator_per_log_unit", "marker"),
)


# ---------------------------------------------------------------- log prior


def _p(params: dict, key: str, default=None):
    value = params.get(key, default)
    if value is None:
        raise KeyError(key)
    return np.asarray(value, dtype=float)


def _scale(params: dict, sigma: str = "sigma") -> np.ndarray:
    """PyMC's sigma, or 1 / sqrt(tau) when the precision is given."""
    return 1.0 / np.sqrt(_p(params, "tau")) if "tau" in params else _p(params, sigma, 1.0)


def _half_student_t(x, p):
    nu, s = _p(p, "nu"), _scale(p)
    return np.log(2.0) + stats.t.logpdf(x, nu, 0.0, s)


def _gamma(x, p):
    if "alpha" in p:
        alpha, beta = _p(p, "alpha"), _p(p, "beta")
    else:
        mu, sd = _p(p, "mu"), _p(p, "sigma")
        alpha, beta = mu**2 / sd**2, mu / sd**2
    return stats.gamma.logpdf(x, alpha, scale=1.0 / beta)


def _exponential(x, p):
    scale = _p(p, "scale") if "scale" in p else 1.0 / _p(p, "lam")
    return stats.expon.logpdf(x, scale=scale)


def _zero_sum_normal(x, p):
    """PyMC's ZeroSumNormal over the last axis: the normal density of the n - 1 free directions."""
    sigma, n = _p(p, "sigma", 1.0), x.shape[-1]
    return np.sum(-0.5 * (x / sigma) ** 2, axis=-1) - (n - 1) * (0.5 * np.log(2 * np.pi) + np.log(sigma))


def lkj_normalizing_constant(eta: float, n: int) -> float:
    """The log normalising constant of the LKJ(eta) density of an n x n correlation matrix (as PyMC's)."""
    if eta == 1:
        out = float(np.sum(special.gammaln(2.0 * np.arange(1, int((n - 1) / 2) + 1))))
        if n % 2 == 1:
            out += (0.25 * (n**2 - 1) * math.log(math.pi) - 0.25 * (n - 1) ** 2 * math.log(2.0)
                    - (n - 1) * special.gammaln(int((n + 1) / 2)))
        else:
            out += (0.25 * n * (n - 2) * math.log(math.pi) + 0.25 * (3 * n**2 - 4 * n) * math.log(2.0)
                    + n * special.gammaln(n / 2) - (n - 1) * special.gammaln(n))
        return out
    k = np.arange(1, n)
    terms = 0.5 * k * math.log(math.pi) + special.gammaln(eta + 0.5 * (n - 1 - k))
    return float(-(n - 1) * special.gammaln(eta + 0.5 * (n - 1)) + np.sum(terms))


def _lkj(x, p):
    """LKJ(eta) of a correlation: a scalar per draw (n = 2) or an n x n matrix in the last two axes."""
    eta = float(_p(p, "eta"))
    if x.ndim == 2:  # (chain, draw): the one correlation of a 2 x 2 matrix
        n, logdet = 2, np.log1p(-(x**2))
    else:
        n = x.shape[-1]
        sign, logdet = np.linalg.slogdet(x)
        logdet = np.where(sign > 0, logdet, -np.inf)
    return lkj_normalizing_constant(eta, n) + (eta - 1.0) * logdet


# family -> (log density of the values, reduces the last axis or axes itself)
DENSITIES = {
    "Normal": (lambda x, p: stats.norm.logpdf(x, _p(p, "mu", 0.0), _scale(p)), False),
    "StudentT": (lambda x, p: stats.t.logpdf(x, _p(p, "nu"), _p(p, "mu", 0.0), _scale(p)), False),
    "Cauchy": (lambda x, p: stats.cauchy.logpdf(x, _p(p, "alpha"), _p(p, "beta")), False),
    "Laplace": (lambda x, p: stats.laplace.logpdf(x, _p(p, "mu"), _p(p, "b")), False),
    "HalfNormal": (lambda x, p: stats.halfnorm.logpdf(x, scale=_scale(p)), False),
    "HalfStudentT": (_half_student_t, False),
    "HalfCauchy": (lambda x, p: stats.halfcauchy.logpdf(x, scale=_p(p, "beta", 1.0)), False),
    "Exponential": (_exponential, False),
    "Gamma": (_gamma, False),
    "InverseGamma": (lambda x, p: stats.invgamma.logpdf(x, _p(p, "alpha"), scale=_p(p, "beta")), False),
    "LogNormal": (lambda x, p: stats.lognorm.logpdf(x, _scale(p), scale=np.exp(_p(p, "mu", 0.0))), False),
    "ZeroSumNormal": (_zero_sum_normal, True),
    "LKJ": (_lkj, True),
}


def prior_log_density(prior: Prior, values) -> np.ndarray:
    """log p(values) under `prior`, summed over every axis after (chain, draw): one number per draw.

    `values` is (chain, draw, ...) as stored; the prior's parameters broadcast over the trailing axes."""
    x = np.asarray(values, dtype=float)
    if prior.dist not in DENSITIES:
        raise KeyError(f"no log density for the family '{prior.dist}'")
    density, reduces = DENSITIES[prior.dist]
    lp = np.asarray(density(x, prior.params), dtype=float)
    return lp if reduces and lp.ndim == 2 else lp.reshape(*x.shape[:2], -1).sum(axis=-1)


def stored_priors(idata) -> dict[str, Prior]:
    """The priors a fit used, as recorded in its provenance ({} when none are recorded)."""
    raw = idata.posterior.attrs.get("priors")
    if raw is None:
        return {}
    data = json.loads(raw) if isinstance(raw, str) else raw
    return {k: v if isinstance(v, Prior) else Prior(v["dist"], dict(v["params"]), v.get("reason", "")) for k, v in data.items()}


def prior_variable(name: str, posterior) -> str | None:
    """The posterior variable a named prior is stated for, or None when the fit has none (e.g. one site).

    posterior  a posterior Dataset (its data variables, not its coordinates: 'site' is a dim) or a set of names"""
    names = posterior.data_vars if isinstance(posterior, xr.Dataset) else posterior
    for var in (name, *PRIOR_VARIABLES.get(name, ())):
        if var in names:
            return var
    return None


def log_prior(idata, priors: Mapping[str, Prior] | None = None) -> xr.Dataset:
    """The log prior of every draw, one variable per named prior (dims chain, draw): arviz's `log_prior` group.

    priors  {name: Prior}; default: those recorded in the fit. A prior without a posterior variable or
            with a family outside DENSITIES is left out and listed in attrs['not_power_scaled']."""
    post = idata.posterior
    priors = dict(priors) if priors is not None else stored_priors(idata)
    out, left_out = {}, {}
    for name, prior in priors.items():
        var = prior_variable(name, post)
        if var is None:
            left_out[name] = "no posterior variable"
            continue
        if prior.dist not in DENSITIES:
            left_out[name] = f"no log density for {prior.dist}"
            continue
        values = post[var].transpose("chain", "draw", ...).values
        out[name] = xr.DataArray(prior_log_density(prior, values), dims=("chain", "draw"),
                                 coords={"chain": post["chain"].values, "draw": post["draw"].values})
    ds = xr.Dataset(out)
    ds.attrs["not_power_scaled"] = json.dumps(left_out, sort_keys=True)
    return ds


# ---------------------------------------------------------------- the effects and the table


@dataclass(frozen=True)
class Effect:
    """One reported quantity: its label, the variable and row it comes from, and its draws (chain, draw)."""

    effect: str
    variable: str
    week: float | None
    marker: str
    draws: np.ndarray


def reported_weeks(idata) -> list[float] | None:
    """End of treatment and last follow-up week, from the fit's provenance (None when not recorded)."""
    raw = idata.posterior.attrs.get("design_constants")
    if raw is None:
        return None
    constants = json.loads(raw) if isinstance(raw, str) else raw
    end, last = float(constants["treatment_end"]), float(constants["last_week"])
    return [end] + ([last] if last > end else [])


def reported_effects(idata, weeks=None) -> list[Effect]:
    """The effects a fit reports: each active arm - control difference at the end of treatment and the last
    follow-up, the control change at the end of treatment, per-doubling biomarker effects, ratios of
    geometric means, and the mediation effects (EFFECT_VARIABLES), those present in the posterior. A variable
    with an 'active_arm' dim gives one effect per active arm, labelled 'var[arm]' when there are several
    ('nac_effect[low] at week 12'), 'var' when there is one.

    weeks  the weeks of nac_effect (default: end of treatment and last follow-up from the fit's
           provenance, else every week but 0); placebo_change is taken at the first of them."""
    post = idata.posterior
    weeks = list(weeks) if weeks is not None else reported_weeks(idata)
    out = []
    for var, dim in EFFECT_VARIABLES:
        if var not in post.data_vars:
            continue
        whole = post[var].transpose("chain", "draw", ...)
        arms = [str(a) for a in whole["active_arm"].values] if "active_arm" in whole.dims else [None]
        for arm in arms:
            da = whole.sel(active_arm=arm) if arm is not None else whole
            name = f"{var}[{arm}]" if arm is not None and len(arms) > 1 else var
            if dim is None:
                out.append(Effect(name, var, None, "", da.values))
                continue
            labels = list(da[dim].values)
            if dim == "week":
                chosen = weeks if weeks is not None else [w for w in labels if float(w) != 0]
                if var == "placebo_change":
                    chosen = chosen[:1]
                labels = [w for w in labels if any(float(w) == float(c) for c in chosen)]
            for label in labels:
                draws = da.sel({dim: label}).values
                if np.ptp(draws) == 0:  # a constant (e.g. week 0 of the MMRM): nothing to be sensitive
                    continue
                text = f"{name} at week {float(label):g}" if dim == "week" else f"{name}, {label}"
                out.append(Effect(text, var, float(label) if dim == "week" else None, str(label) if dim == "marker" else "", draws))
    return out


def likelihood_variables(idata) -> list[str]:
    """The outcome's pointwise log-likelihood variables (not the integrated densities kept for the comparison)."""
    if "log_likelihood" not in idata.groups():
        return []
    return [v for v in idata.log_likelihood.data_vars if v not in INTEGRATED_NOTES]


def diagnosis(prior: float, likelihood: float, threshold: float = PRIOR_SENSITIVITY_THRESHOLD) -> str:
    """Kallioinen et al.'s reading of the two sensitivities (the rule of their priorsense package)."""
    if prior >= threshold and likelihood >= threshold:
        return CONFLICT
    if prior >= threshold and likelihood < threshold:
        return STRONG_PRIOR
    return NO_FLAG


def _component_total(ds: xr.Dataset, names) -> xr.DataArray:
    total = None
    for name in names:
        da = ds[name]
        part = da.sum([d for d in da.dims if d not in ("chain", "draw")]) if da.ndim > 2 else da
        total = part if total is None else total + part
    return total.transpose("chain", "draw")


def _pareto_k(component: np.ndarray, delta: float) -> float:
    """The largest Pareto k of the two power-scaling weightings (> 0.7: the importance sampling is unreliable)."""
    ks = []
    flat = component.ravel()
    for alpha in (1 / (1 + delta), 1 + delta):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ks.append(float(az.psislw((alpha - 1) * flat)[1]))
    return max(ks)


def prior_sensitivity_table(
    idata,
    effects: Mapping[str, object] | list[Effect] | None = None,
    *,
    priors: Mapping[str, Prior] | None = None,
    weeks=None,
    delta: float = POWER_SCALING_DELTA,
    threshold: float = PRIOR_SENSITIVITY_THRESHOLD,
) -> pd.DataFrame:
    """Prior and likelihood power-scaling sensitivity of each reported effect of a fit.

    idata    a fit with its posterior, the pointwise log_likelihood (deptrial.load_fit gives it for a
             saved fit) and the priors recorded in its provenance
    effects  {label: draws (chain, draw)} or a list of Effect; default `reported_effects(idata, weeks)`
    priors   {name: Prior} to power-scale; default: the priors recorded in the fit

    Columns (TABLE_COLUMNS): effect, variable, week, marker, prior_sensitivity, likelihood_sensitivity,
    prior_sensitive (prior sensitivity at or above `threshold`), diagnosis (CONFLICT, STRONG_PRIOR or
    NO_FLAG); then, the same on every row, prior_pareto_k and likelihood_pareto_k (the largest Pareto k
    of that component's power-scaling weights, NaN when the component is absent; above loo.PARETO_K_MAX
    its sensitivities are unreliable) and not_power_scaled ('name (reason); ...' for each prior left
    out, '' when none). A sensitivity is NaN when nothing of its component could be power-scaled.
    attrs: the priors power-scaled and left out, the likelihood variables, the largest Pareto k of
    each component's weights, delta and threshold.
    """
    post = idata.posterior
    if effects is None:
        effects = reported_effects(idata, weeks)
    elif isinstance(effects, Mapping):
        effects = [Effect(str(k), str(k), None, "", np.asarray(v.transpose("chain", "draw").values if isinstance(v, xr.DataArray) else v))
                   for k, v in effects.items()]
    effects = list(effects)
    lp = log_prior(idata, priors)
    lik_vars = likelihood_variables(idata)
    coords = {"chain": post["chain"].values, "draw": post["draw"].values}
    names = [f"e{i}" for i in range(len(effects))]
    quantities = xr.Dataset({n: xr.DataArray(np.asarray(e.draws, dtype=float).reshape(len(coords["chain"]), len(coords["draw"])),
                                             dims=("chain", "draw"), coords=coords) for n, e in zip(names, effects)})
    sens = {"prior": {}, "likelihood": {}}
    k_hat = {}
    components = {
        "prior": _component_total(lp, list(lp.data_vars)) if lp.data_vars else None,
        "likelihood": _component_total(idata.log_likelihood, lik_vars) if lik_vars else None,
    }
    for component, total in components.items():
        if total is None or not names:
            sens[component] = {n: float("nan") for n in names}
            continue
        total = total.assign_coords(coords)
        group = "log_prior" if component == "prior" else "log_likelihood"
        data = az.InferenceData(posterior=quantities, **{group: xr.Dataset({component: total})})
        with warnings.catch_warnings():  # a Pareto k above 0.7 is reported in attrs, not as a warning per call
            warnings.simplefilter("ignore")
            result = az.psens(data, component=component, delta=delta)
        sens[component] = {n: float(result[n]) for n in names}
        k_hat[component] = _pareto_k(total.values, delta)
    left_out = json.loads(lp.attrs["not_power_scaled"])
    not_scaled = "; ".join(f"{name} ({reason})" for name, reason in left_out.items())
    rows = []
    for n, e in zip(names, effects):
        p, lik = sens["prior"][n], sens["likelihood"][n]
        rows.append({
            "effect": e.effect, "variable": e.variable, "week": e.week, "marker": e.marker,
            "prior_sensitivity": p, "likelihood_sensitivity": lik,
            "prior_sensitive": bool(p >= threshold), "diagnosis": diagnosis(p, lik, threshold),
            "prior_pareto_k": k_hat.get("prior", float("nan")), "likelihood_pareto_k": k_hat.get("likelihood", float("nan")),
            "not_power_scaled": not_scaled,
        })
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table.attrs.update({
        "power_scaled_priors": list(lp.data_vars),
        "not_power_scaled": left_out,
        "likelihood_variables": lik_vars,
        "pareto_k": k_hat,
        "delta": delta,
        "threshold": threshold,
    })
    return table
