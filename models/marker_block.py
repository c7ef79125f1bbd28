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
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

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


def add_marker_block(md: MarkerData, priors: dict[str, Prior], prefix: str = "marker") -> pt.TensorVariable:
    """Add the baseline marker block to the current model; return the completed z (participant x marker)."""
    n, m = md.z.shape
    model = pm.modelcontext(None)
    if "marker" not in model.coords:
        model.add_coord("marker", md.names)
    miss_i, miss_k = np.nonzero(md.missing)
    cens_i, cens_k = np.nonzero(md.censored)
    obs_mask = ~md.missing & ~md.censored
    model.add_coord(f"{prefix}_missing_value", np.arange(len(miss_i)))
    model.add_coord(f"{prefix}_censored_value", np.arange(len(cens_i)))

    mean = rv(f"{prefix}_mean", priors["marker_mean"], dims="marker")
    sd = rv(f"{prefix}_sd", priors["marker_sd"], dims="marker")
    n_links = m * (m - 1) // 2
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
        obs_rows = np.flatnonzero(obs_mask[:, k])
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
    return z
