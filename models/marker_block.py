"""Baseline log biomarkers as a joint latent block: missing values imputed, censored ones bounded.

Only a subset of participants gave serum and some IL-6 results fall below the assay's
detection limit. Dropping those participants wastes their MADRS data and biases estimates
(missingness is not random); plugging in the limit or zero biases the marker effect. So
the standardised log markers z_i are modelled jointly, in sequence,
    z_i1 ~ N(a_1, s_1),  z_ik | z_i,<k ~ N(a_k + sum_j<k B_kj z_ij, s_k),
which is a full multivariate normal with an unrestricted covariance. Then
- observed entries contribute their likelihood,
- missing entries are latent: z = mu + s * eta, eta ~ N(0, 1),
- censored entries are latent below the standardised limit c: z = mu + s * Phi^-1(u Phi((c-mu)/s)),
  u ~ U(0, 1), plus log Phi((c-mu)/s), the probability of being below the limit.
Both latent forms are non-centred and acyclic, so the block samples cleanly and supports
prior predictive draws. The outcome model then uses the completed matrix, so a missing
marker is informed by the participant's other markers *and* their symptom trajectory.

Integrated missing values (the fast path, `integrate_missing=True`). The sequential form is the
multivariate normal z_i ~ N(mu, Sigma) with R = I - B (B the regressions, below the diagonal),
mu = R^-1 a and Sigma = R^-1 diag(s^2) R^-T. For a participant whose missing markers M are the
only unobserved ones (no censored value), z_M given the observed z_K is Gaussian:
    z_M | z_K ~ N(m_i, C),   m_i = mu_M + Sigma_MK Sigma_KK^-1 (z_K - mu_K),
                             C   = Sigma_MM - Sigma_MK Sigma_KK^-1 Sigma_KM,
and z_K ~ N(mu_K, Sigma_KK). The markers enter the outcome's mean linearly, so z_M is integrated
out of the outcome model with the participant effects (models/marginal.py): the participant's
observed markers contribute log N(z_K | mu_K, Sigma_KK), the block returns m_i in their row of z,
and `IntegratedPattern.cov` is C. Participants with a censored value keep their missing values
latent as above (a censored value is not Gaussian given the others).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from maths.gaussian import conditional_normal, conditional_normal_graph, sequential_moments

from .design import MarkerData
from .priors import Prior, rv

SQRT2 = float(np.sqrt(2.0))  # a float64 constant: pt.sqrt(2.0) would be computed in float32
LOGCDF_SWITCH = -20.0  # below this log Phi uses its asymptotic series (erfc underflows near -38)


def std_normal_icdf(p):
    """Phi^-1(p), with p kept inside (1e-300, 1 - 1e-16) so an underflowed probability stays finite."""
    p = pt.clip(p, 1e-300, 1.0 - 1e-16)
    return -SQRT2 * pt.erfcinv(2.0 * p)


def std_normal_logcdf(x):
    """log Phi(x), finite for every finite x.

    log(erfc(-x / sqrt 2) / 2) is exact to double precision down to x = -38, where erfc underflows
    to 0 and the log to -inf (prior draws with a tiny marker SD put a detection limit that far
    below the mean). Below LOGCDF_SWITCH the asymptotic series
    log Phi(x) = -x^2/2 - log(-x) - log(2 pi)/2 + log(1 - 1/x^2 + 3/x^4 - 15/x^6 + 105/x^8)
    takes over (truncation error < 1e-10 there). Each branch gets inputs clipped to its own range,
    so the branch not taken cannot put a NaN into the gradient.
    """
    hi = pt.maximum(x, LOGCDF_SWITCH)
    lo = pt.minimum(x, LOGCDF_SWITCH)
    exact = pt.log(0.5 * pt.erfc(-hi / SQRT2))
    r = 1.0 / pt.sqr(lo)
    series = -0.5 * pt.sqr(lo) - pt.log(-lo) - 0.5 * np.log(2.0 * np.pi) + pt.log1p(r * (-1.0 + r * (3.0 + r * (-15.0 + 105.0 * r))))
    return pt.switch(x >= LOGCDF_SWITCH, exact, series)


@dataclass(frozen=True)
class IntegratedPattern:
    """Participants whose missing markers are integrated out, all with the same missing set."""

    rows: np.ndarray  # participant indices
    missing: np.ndarray  # marker indices M (the rest K are observed)
    cov: object  # C = Var(z_M | z_K), |M| x |M| (pytensor)


def integrated_rows(md: MarkerData) -> np.ndarray:
    """Participants whose missing markers can be integrated out: some missing, none censored (bool, participant)."""
    return md.missing.any(axis=1) & ~md.censored.any(axis=1)


def missing_patterns(md: MarkerData) -> list[tuple[np.ndarray, np.ndarray]]:
    """(participants, missing marker indices) per missing pattern of the integrated participants, in a fixed order."""
    rows = np.flatnonzero(integrated_rows(md))
    keys = [tuple(np.flatnonzero(md.missing[i])) for i in rows]
    return [(rows[[k == key for k in keys]], np.array(key, dtype=int)) for key in sorted(set(keys))]


def latent_missing(md: MarkerData) -> np.ndarray:
    """Indices (among all missing entries, row-major) of the missing entries that stay latent on the fast path."""
    mi, _ = np.nonzero(md.missing)
    return np.flatnonzero(~integrated_rows(md)[mi])


def integrated_marker_terms(post, design) -> list[dict]:
    """Per missing pattern of the integrated participants, per draw of a posterior (an xarray Dataset with the marker
    block and `marker_prognostic`, `marker_moderation` [, `nac_marker_moderation`, active_arm x marker]): their rows,
    missing markers M, conditional means m (chain, draw, rows, |M|), covariance C (chain, draw, |M|, |M|) and loadings A
    on the participant's level and change (chain, draw, rows, 2, |M|: with the biomarker x arm term, a participant in
    active arm a has nac_marker_moderation[a] added to the change's, a control participant nothing); [] without
    integrated participants. The same quantities the model adds to each participant's covariance (add_marker_block,
    models/trajectory.participant_cholesky)."""
    md = design.baseline
    if md is None or "marker_mean" not in post:
        return []
    draws = lambda name: post[name].transpose("chain", "draw", ...).values  # noqa: E731
    m = md.z.shape[1]
    links = draws("marker_regression") if m > 1 else None
    mu, cov = sequential_moments(draws("marker_mean"), draws("marker_sd"), links, m)
    prog, mod = draws("marker_prognostic"), draws("marker_moderation")
    nmod = draws("nac_marker_moderation") if "nac_marker_moderation" in post else None  # chain, draw, active arm, marker
    out = []
    for rows, miss in missing_patterns(md):
        keep = np.setdiff1d(np.arange(m), miss)
        _, c, mean = conditional_normal(mu, cov, keep, miss, md.z[np.ix_(rows, keep)])
        a0 = np.broadcast_to(prog[:, :, None, miss], mean.shape)
        a1 = mod[:, :, None, miss]
        for arm in range(nmod.shape[2] if nmod is not None else 0):  # each active arm's terms, times its indicator
            a1 = a1 + nmod[:, :, arm][:, :, None, miss] * (design.arm_idx[rows] == arm + 1).astype(float)[:, None]
        out.append({"rows": rows, "missing": miss, "mean": mean, "cov": c, "loadings": np.stack([a0, np.broadcast_to(a1, mean.shape)], axis=-2)})
    return out


def add_marker_block(md: MarkerData, priors: dict[str, Prior], prefix: str = "marker", integrate_missing: bool = False):
    """Add the baseline marker block to the current model; return the completed z (participant x marker).

    With integrate_missing, return (z, patterns): the missing values of the participants without a
    censored value are integrated out (module docstring); their rows of z hold the conditional means
    m_i, and `patterns` (IntegratedPattern) give the conditional covariances the outcome model adds."""
    n, m = md.z.shape
    model = pm.modelcontext(None)
    if "marker" not in model.coords:
        model.add_coord("marker", md.names)
    integrated = integrated_rows(md) if integrate_missing else np.zeros(n, dtype=bool)
    latent_missing_entries = md.missing & ~integrated[:, None]
    all_mi, _ = np.nonzero(md.missing)
    miss_i, miss_k = np.nonzero(latent_missing_entries)
    cens_i, cens_k = np.nonzero(md.censored)
    obs_mask = ~md.missing & ~md.censored
    seq_obs = obs_mask & ~integrated[:, None]  # observed entries scored by the sequential form
    # the latent entries keep their numbers among all missing entries, so a fit's values line up with the plain model's
    model.add_coord(f"{prefix}_missing_value", np.flatnonzero(~integrated[all_mi]))
    model.add_coord(f"{prefix}_censored_value", np.arange(len(cens_i)))

    mean = rv(f"{prefix}_mean", priors["marker_mean"], dims="marker")
    sd = rv(f"{prefix}_sd", priors["marker_sd"], dims="marker")
    n_links = m * (m - 1) // 2
    links = None
    if n_links:
        model.add_coord(f"{prefix}_link", [f"{md.names[k]}~{md.names[j]}" for k in range(m) for j in range(k)])
        links = rv(f"{prefix}_regression", priors["marker_regression"], dims=f"{prefix}_link")
    eta = pm.Normal(f"{prefix}_missing_std", 0.0, 1.0, dims=f"{prefix}_missing_value") if len(miss_i) else None
    u = pm.Uniform(f"{prefix}_censored_u", 0.0, 1.0, dims=f"{prefix}_censored_value") if len(cens_i) else None

    data = np.where(obs_mask, md.z, 0.0)
    columns = []
    link_pos = 0
    for k in range(m):
        mu_k = mean[k] + pt.zeros(n)
        for j in range(k):
            mu_k = mu_k + links[link_pos] * columns[j]
            link_pos += 1
        col = pt.as_tensor_variable(data[:, k])
        rows_m = np.flatnonzero(miss_k == k)
        if len(rows_m):
            idx = miss_i[rows_m]
            col = pt.set_subtensor(col[idx], mu_k[idx] + sd[k] * eta[rows_m])
        rows_c = np.flatnonzero(cens_k == k)
        if len(rows_c):
            idx = cens_i[rows_c]
            c = (md.z_upper[idx, k] - mu_k[idx]) / sd[k]
            log_below = std_normal_logcdf(c)
            col = pt.set_subtensor(col[idx], mu_k[idx] + sd[k] * std_normal_icdf(u[rows_c] * pt.exp(log_below)))
            pm.Potential(f"{prefix}_censored_{md.names[k]}", log_below.sum())
        obs_rows = np.flatnonzero(seq_obs[:, k])
        if len(obs_rows):
            model.add_coord(f"{prefix}_observed_{md.names[k]}", obs_rows)
            pm.Normal(
                f"{prefix}_{md.names[k]}",
                mu=mu_k[obs_rows],
                sigma=sd[k],
                observed=md.z[obs_rows, k],
                dims=f"{prefix}_observed_{md.names[k]}",
            )
        columns.append(col)
    z = pt.stack(columns, axis=1)
    if not integrate_missing:
        return z
    patterns = []
    if integrated.any():
        mu, cov = sequential_moments(mean, sd, links if links is not None else pt.zeros(0), m, xp=pt)
        for number, (rows, miss) in enumerate(missing_patterns(md)):
            keep = np.setdiff1d(np.arange(m), miss)
            if len(keep):
                zk = md.z[np.ix_(rows, keep)]
                cond_mean, cond_cov = conditional_normal_graph(mu, cov, keep, miss, zk, xp=pt)
                pm.Potential(f"{prefix}_observed_pattern{number}",
                             pm.logp(pm.MvNormal.dist(mu=mu[keep], cov=cov[keep][:, keep]), zk).sum())
            else:
                cond_mean = pt.zeros((len(rows), len(miss))) + mu[miss][None, :]
                cond_cov = cov[miss][:, miss]
            z = pt.set_subtensor(z[rows[:, None], miss[None, :]], cond_mean)
            patterns.append(IntegratedPattern(rows=rows, missing=miss, cov=cond_cov))
    return z, patterns
