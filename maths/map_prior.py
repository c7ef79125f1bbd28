"""Meta-analytic-predictive (MAP) priors for the control arm, from historical control-arm results (numpy and scipy).

The model (Neuenschwander et al. 2010, Clin Trials 7:5; RBesT's gMAP for a normal endpoint with one summary
per trial). Trial j = 1..H reports its control arm's mean change y_j, the SD of the change sd_j and n_j:

    y_j ~ Normal(theta_j, s_j^2),  s_j = sd_j / sqrt(n_j)         (the trial's standard error)
    theta_j ~ Normal(mu, tau^2)                                  (exchangeable trials)
    mu ~ Normal(0, mu_sd^2),  mu_sd = 100 max(sigma / 10, SD of the y_j)   (vague; RBesT's default)
    tau ~ HalfNormal(tau_scale),  tau_scale = sigma / 2          (the default; an argument)

with sigma the unit SD, the SD of one participant's change: by default the pooled
sigma = sqrt(sum n_j / sum(n_j / sd_j^2)) (RBesT's reference scale: the SD with which sum n_j participants
carry the historical trials' total information sum 1/s_j^2, so a fully pooled MAP (tau = 0) has ESS
sum n_j), or given. The MAP prior is the predictive distribution of a new trial's theta*, theta* | y.

How it is computed (`tau_posterior`, `map_draws`): given tau, mu and the theta_j integrate out in closed
form (the y_j are independent Normal(mu, s_j^2 + tau^2)), so p(tau | y) is known up to a constant on a
1-D grid, and mu | tau, y and theta* | mu, tau are normal. Draws of (tau, mu, theta*) are then exact:
tau by inverting the CDF of the piecewise-linear grid density, mu and theta* from their normals by their
inverse CDFs, the three uniforms a scrambled Sobol sequence (randomised quasi-Monte Carlo: every draw is an
exact draw, and the set fills the space evenly, so its moments and CDF carry far less Monte Carlo noise
than independent draws); deterministic given the seed. No MCMC.
The same grid gives the MAP density itself as a normal mixture over the grid's tau nodes
(`TauPosterior.predictive`), against which the mixture approximation's accuracy is measured.

The independent check (`map_moments_by_quadrature`): the MAP mean and SD by adaptive quadrature over tau
(scipy.integrate.quad_vec) of the joint normal of (theta*, y) given tau: its log density by
scipy.stats.multivariate_normal, the conditional moments by maths.gaussian.conditional_normal, no shared
code with the sampler's closed forms.

The mixture (`fit_mixture`, as RBesT's automixfit): EM fits (SQUAREM-accelerated) of K = 1..4 normal components
to the draws, for K >= 2 from two starts (spread over the quantiles; nested around the median), and the K with the
smallest AIC with penalty 6 per parameter (RBesT's default, Collett 2003: favours fewer components;
AIC_K = -2 loglik + 6 (3K - 1)); `criterion="bic"` uses log(draws) instead. Its accuracy
(`approximation_accuracy`): Kolmogorov distances to the draws and to the exact MAP, KL(exact || mixture), moments.
`NormalMixture` is a normal mixture with its density, CDF, moments, draws and its conjugate posterior
update given a normal estimate.

Robustification (Schmidli et al. 2014, Biometrics 70:1023): the MAP mixture with weight 1 - w and a vague
component with weight w (default 0.2), centred on the MAP mean with the unit-information SD sigma
(one participant's worth, n = 1).

Effective sample size, in participants with SD sigma:
- moment: ESS = sigma^2 / Var(prior);
- ELIR (expected local information ratio, Neuenschwander, Weber, Schmidli and O'Hagan 2020, Biometrics
  76:578; RBesT ess(method = "elir")): ESS = sigma^2 E_prior[ i(theta) ], i(theta) = -d^2/dtheta^2 log p(theta),
  the prior's curvature averaged over the prior, per the information of one observation (1 / sigma^2).
  For a mixture with responsibilities r_k(theta), i = sum_k r_k / s_k^2 - Var_r(g), g_k = (m_k - theta) / s_k^2.
Both are n for a Normal(m, sigma^2 / n) prior.

Prior-data conflict (`conflict_pvalue`): a new control arm's estimate (mean change) with its SE is,
under the MAP prior, distributed as the mixture convolved with Normal(0, se^2); the two-sided p-value is
2 min(F(estimate), 1 - F(estimate)) of that predictive. The posterior weight of the robust mixture's
vague component after the new data is its reweighted share in `NormalMixture.posterior`.

`fit_map_prior(...)` does it all and returns a `MapPrior` (`to_json()`: the content of map_prior.json).
data/historical.py reads and validates the historical trials; tests/test_map_prior.py checks each piece.

A mixture prior on the control mean in a trial's analysis (`control_prior_posterior`, `MixtureArray`; used by
planning/analysis.py, checked against 2-D numerical integration in tests/test_planning_map.py). A trial's analysis
gives, per trial (any leading axes), an estimate (c_hat, d_hat) of the control arm's mean change c at the primary
visit and of an active arm's difference from control d, with covariance S = [[S_cc, S_cd], [S_cd, S_dd]]: the
normal posterior of (c, d) under a flat prior on c and the analysis' priors on every other coefficient (in the
MMRM: the GLS given Sigma with the prior precision of that one coefficient set to 0; or the likelihood itself).
Since that flat-c posterior is proportional to the likelihood times the priors on everything but c, the posterior
under a prior p(c) on c as well is p(c) N((c, d); (c_hat, d_hat), S) up to a constant: the other priors enter once,
through S, and p(c) is the only new factor. With p(c) = sum_k w_k N(m_k, s_k^2):

    P(k | data)  proportional to  w_k N(c_hat; m_k, s_k^2 + S_cc)           (c_hat's prior predictive under component k)
    c | k, data  = the conjugate normal update of N(m_k, s_k^2) by c_hat with variance S_cc   (maths.gaussian.conjugate_normal)
    d | c, data  ~ N(d_hat + (S_cd / S_cc)(c - c_hat), S_dd - S_cd^2 / S_cc)   (the conditional of the bivariate normal)
    d | k, data  ~ N(d_hat + (S_cd / S_cc)(E[c | k] - c_hat), S_dd - S_cd^2 / S_cc + (S_cd / S_cc)^2 Var[c | k])

so d's posterior is the normal mixture with the weights P(k | data). When (c_hat, d_hat, S) is the likelihood of
(c, d) and d has its own Normal(0, effect_prior_sd^2) prior not yet in S (the completers' ANCOVA, which updates
each arm's estimate by its prior), that prior is applied first: d's marginal is updated by it (conjugate_normal),
and c | d keeps the likelihood's regression on d, so the flat-c posterior has
E[d] = mu_d, Var[d] = V_d, Cov(c, d) = b V_d, E[c] = c_hat + b (mu_d - d_hat), Var[c] = S_cc - b^2 S_dd + b^2 V_d,
b = S_cd / S_dd. With a single component N(m, s^2) and s -> infinity the result is the flat-c posterior itself.
`MixtureArray` holds such mixtures for a whole batch: CDF (normal, or each component with Student-t tails on
given degrees of freedom), moments and quantiles (bisection on the CDF).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import integrate, optimize, special, stats
from scipy.stats import qmc

from .gaussian import conditional_normal, conjugate_normal

ROBUST_WEIGHT = 0.2  # the vague component's weight (Schmidli et al. 2014 use 0.1-0.5; RBesT's examples 0.2)
TAU_SCALE_FACTOR = 0.5  # tau ~ HalfNormal(sigma / 2): "large" heterogeneity (tau / sigma = 0.5) at one prior SD
MU_SD_FACTOR = 100.0  # mu ~ Normal(0, 100 max(sigma / 10, SD of the trials' means)): RBesT's vague default
N_DRAWS = 2**14  # 16384 scrambled Sobol points
SEED = 1
MAX_COMPONENTS = 4
AIC_PENALTY = 6.0  # RBesT automixfit's default k
GRID_POINTS = 2001
_LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------- normal mixtures


@dataclass(frozen=True, eq=False)
class NormalMixture:
    """sum_k weights_k Normal(means_k, sds_k^2); the weights are normalised to sum to 1."""

    weights: np.ndarray
    means: np.ndarray
    sds: np.ndarray

    def __post_init__(self) -> None:
        w, m, s = (np.atleast_1d(np.asarray(v, dtype=float)).copy() for v in (self.weights, self.means, self.sds))
        if w.ndim != 1 or not (w.shape == m.shape == s.shape) or len(w) == 0:
            raise ValueError(f"a normal mixture needs as many weights, means and SDs (got {w.shape}, {m.shape}, {s.shape})")
        if not (np.isfinite(w).all() and np.isfinite(m).all() and np.isfinite(s).all()):
            raise ValueError("a normal mixture's weights, means and SDs must be finite")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"mixture weights must be >= 0 and not all 0, got {w.tolist()}")
        if (s <= 0).any():
            raise ValueError(f"mixture SDs must be positive, got {s.tolist()}")
        for name, v in (("weights", w / w.sum()), ("means", m), ("sds", s)):
            v.setflags(write=False)
            object.__setattr__(self, name, v)

    def __len__(self) -> int:
        return len(self.weights)

    # densities
    def component_logpdf(self, x) -> np.ndarray:
        """(..., K): log(w_k) + log Normal(x; m_k, s_k^2)."""
        z = (np.asarray(x, dtype=float)[..., None] - self.means) / self.sds
        with np.errstate(divide="ignore"):
            logw = np.log(self.weights)
        return logw - np.log(self.sds) - 0.5 * _LOG_2PI - 0.5 * z * z

    def logpdf(self, x) -> np.ndarray:
        return special.logsumexp(self.component_logpdf(x), axis=-1)

    def pdf(self, x) -> np.ndarray:
        return np.exp(self.logpdf(x))

    def cdf(self, x) -> np.ndarray:
        z = (np.asarray(x, dtype=float)[..., None] - self.means) / self.sds
        return special.ndtr(z) @ self.weights

    def sf(self, x) -> np.ndarray:
        """1 - cdf, without cancellation in the upper tail."""
        z = (np.asarray(x, dtype=float)[..., None] - self.means) / self.sds
        return special.ndtr(-z) @ self.weights

    def quantile(self, q) -> np.ndarray:
        """The q-quantiles (root of cdf(x) = q, bracketed by the components' extreme quantiles)."""
        q = np.atleast_1d(np.asarray(q, dtype=float))
        out = np.empty_like(q)
        for i, p in enumerate(q):
            if not 0 < p < 1:
                raise ValueError(f"quantile level must be in (0, 1), got {p}")
            lo = float(np.min(self.means + self.sds * special.ndtri(p)))
            hi = float(np.max(self.means + self.sds * special.ndtri(p)))
            out[i] = lo if hi - lo < 1e-12 * max(1.0, abs(lo)) else optimize.brentq(lambda x: float(self.cdf(x)) - p, lo, hi, xtol=1e-12)
        return out

    # moments and draws
    @property
    def mean(self) -> float:
        return float(self.weights @ self.means)

    @property
    def var(self) -> float:
        return float(self.weights @ (self.sds**2 + self.means**2) - self.mean**2)

    @property
    def sd(self) -> float:
        return math.sqrt(self.var)

    def sample(self, size: int, rng=None) -> np.ndarray:
        rng = np.random.default_rng(rng)
        k = rng.choice(len(self), size=size, p=self.weights)
        return rng.normal(self.means[k], self.sds[k])

    # the local information and the updates
    def responsibilities(self, x) -> np.ndarray:
        """(..., K): P(component k | theta = x)."""
        c = self.component_logpdf(x)
        return np.exp(c - special.logsumexp(c, axis=-1, keepdims=True))

    def information(self, x) -> np.ndarray:
        """-d^2/dx^2 log p(x) = sum_k r_k / s_k^2 - Var_r(g), g_k = (m_k - x) / s_k^2 (RBesT's mixInfo for normals)."""
        r = self.responsibilities(x)
        prec = 1.0 / self.sds**2
        g = (self.means - np.asarray(x, dtype=float)[..., None]) * prec
        mean_g = (r * g).sum(axis=-1)
        return r @ prec - ((r * g * g).sum(axis=-1) - mean_g**2)

    def convolve(self, se: float) -> NormalMixture:
        """The distribution of an estimate with standard error se of a parameter with this distribution
        (each component's variance plus se^2): the prior predictive of the estimate."""
        return NormalMixture(self.weights, self.means, np.sqrt(self.sds**2 + float(se) ** 2))

    def posterior(self, estimate: float, se: float) -> NormalMixture:
        """The posterior given an estimate ~ Normal(theta, se^2): each component updated by the conjugate normal
        rule, the weights in proportion to w_k Normal(estimate; m_k, s_k^2 + se^2)."""
        log_w = self.convolve(se).component_logpdf(estimate)
        means, var = conjugate_normal(self.means, self.sds**2, float(estimate), float(se) ** 2)
        return NormalMixture(np.exp(log_w - special.logsumexp(log_w)), means, np.sqrt(var))

    def robustify(self, weight: float, sd: float, mean: float | None = None) -> NormalMixture:
        """This mixture with weight 1 - weight, plus a last component Normal(mean (default: this mixture's mean), sd^2)
        with weight `weight`."""
        if not 0 <= weight < 1:
            raise ValueError(f"the robust weight must be in [0, 1), got {weight}")
        if not sd > 0:
            raise ValueError(f"the vague component's SD must be positive, got {sd}")
        centre = self.mean if mean is None else float(mean)
        return NormalMixture(np.append((1 - weight) * self.weights, weight), np.append(self.means, centre), np.append(self.sds, sd))

    def to_dict(self) -> dict:
        return {"weights": [float(v) for v in self.weights], "means": [float(v) for v in self.means],
                "sds": [float(v) for v in self.sds]}

    @classmethod
    def from_dict(cls, d: dict) -> NormalMixture:
        return cls(d["weights"], d["means"], d["sds"])


def ess_moment(prior: NormalMixture, sigma: float) -> float:
    """sigma^2 / Var(prior): the n of the Normal(., sigma^2 / n) with the prior's variance."""
    return float(sigma) ** 2 / prior.var


def ess_elir(prior: NormalMixture, sigma: float) -> float:
    """sigma^2 E_prior[-d^2/dtheta^2 log p(theta)] (Neuenschwander et al. 2020), by adaptive quadrature over the
    components' +-12 SD range, broken at each component's mean and +-1 SD."""
    lo = float(np.min(prior.means - 12 * prior.sds))
    hi = float(np.max(prior.means + 12 * prior.sds))
    pts = np.unique(np.concatenate([prior.means, prior.means - prior.sds, prior.means + prior.sds]))
    pts = pts[(pts > lo) & (pts < hi)]
    value, _ = integrate.quad(lambda x: float(prior.pdf(x) * prior.information(x)), lo, hi, points=pts, limit=1000,
                              epsabs=0.0, epsrel=1e-10)
    return float(sigma) ** 2 * value


def conflict_pvalue(prior: NormalMixture, estimate: float, se: float) -> float:
    """Two-sided predictive p-value of a new control estimate (with its SE) under the prior: 2 min(F, 1 - F) of the
    prior convolved with Normal(0, se^2). Uniform on (0, 1) when the new trial's mean is drawn from the prior."""
    pred = prior.convolve(se)
    return float(min(1.0, 2.0 * min(float(pred.cdf(estimate)), float(pred.sf(estimate)))))


# ---------------------------------------------------------------- the hierarchical model given tau


def pooled_sd(n, sd) -> float:
    """sqrt(sum n_j / sum(n_j / sd_j^2)): the unit SD with which sum n_j participants carry the trials' information."""
    n, sd = np.asarray(n, float), np.asarray(sd, float)
    return float(np.sqrt(n.sum() / (n / sd**2).sum()))


def default_mu_sd(y, sigma: float) -> float:
    """RBesT's vague prior SD of mu for a normal endpoint: 100 max(sigma / 10, SD of the trials' means)."""
    return MU_SD_FACTOR * max(sigma / 10.0, float(np.std(y, ddof=1)) if len(y) > 1 else 0.0)


def _given_tau(tau, y, s2, mu_mean: float, mu_var: float):
    """log p(y | tau) (mu integrated out), E[mu | tau, y] and Var[mu | tau, y] for each tau (any shape)."""
    tau = np.asarray(tau, float)
    w = 1.0 / (s2 + tau[..., None] ** 2)  # (..., H) precisions of the y_j given mu
    wsum = w.sum(axis=-1)
    ybar = (w * y).sum(axis=-1) / wsum
    mean, var = conjugate_normal(mu_mean, mu_var, ybar, 1.0 / wsum)
    # completing the square: sum w (y - m)^2 + (m - mu0)^2 / v0 is smallest at m = mean
    quad = (w * (y - mean[..., None]) ** 2).sum(axis=-1) + (mean - mu_mean) ** 2 / mu_var
    loglik = 0.5 * np.log(w).sum(axis=-1) + 0.5 * np.log(var / mu_var) - 0.5 * quad - 0.5 * len(y) * _LOG_2PI
    return loglik, mean, var


@dataclass(frozen=True, eq=False)
class TauPosterior:
    """p(tau | y) on a uniform grid (normalised so that the trapezoid rule integrates to 1), with the normal
    mu | tau, y at each node."""

    tau: np.ndarray
    density: np.ndarray
    mu_mean: np.ndarray
    mu_var: np.ndarray

    @property
    def masses(self) -> np.ndarray:
        """Trapezoid weights of the nodes (sum 1)."""
        h = self.tau[1] - self.tau[0]
        m = self.density * h
        m[[0, -1]] *= 0.5
        return m

    def sample(self, u) -> np.ndarray:
        """tau at probabilities u in (0, 1): the inverse CDF of the piecewise-linear density between the nodes."""
        h = self.tau[1] - self.tau[0]
        f0, f1 = self.density[:-1], self.density[1:]
        cum = np.concatenate([[0.0], np.cumsum(0.5 * h * (f0 + f1))])
        u = np.asarray(u, float) * cum[-1]
        i = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, len(f0) - 1)
        r = np.clip(u - cum[i], 0.0, None)
        a = (f1[i] - f0[i]) / (2 * h)
        b = f0[i]
        root = np.sqrt(np.maximum(b * b + 4 * a * r, 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(b + root > 0, 2 * r / (b + root), 0.0)  # the root of a t^2 + b t = r in [0, h], without cancellation
        return self.tau[i] + np.clip(t, 0.0, h)

    def summary(self) -> dict:
        m = self.masses
        mean = float(m @ self.tau)
        cdf = np.cumsum(m)
        q = np.interp([0.025, 0.5, 0.975], cdf, self.tau)
        return {"mean": mean, "sd": float(np.sqrt(m @ (self.tau - mean) ** 2)), "q2.5": float(q[0]), "median": float(q[1]),
                "q97.5": float(q[2])}

    def mu_summary(self) -> dict:
        m = self.masses
        mean = float(m @ self.mu_mean)
        return {"mean": mean, "sd": float(np.sqrt(m @ (self.mu_var + (self.mu_mean - mean) ** 2)))}

    def predictive(self) -> NormalMixture:
        """The MAP density of theta* itself: sum over the nodes of mass_i Normal(E[mu | tau_i], Var[mu | tau_i] + tau_i^2)."""
        return NormalMixture(self.masses, self.mu_mean, np.sqrt(self.mu_var + self.tau**2))


def tau_posterior(y, se, tau_scale: float, mu_mean: float, mu_sd: float, n_grid: int = GRID_POINTS) -> TauPosterior:
    """p(tau | y) under tau ~ HalfNormal(tau_scale) on n_grid nodes covering every tau whose log density is within 40
    of the largest (found on a first, wide grid, widened until it holds the whole posterior)."""
    y, s2 = np.asarray(y, float), np.asarray(se, float) ** 2
    mu_var = float(mu_sd) ** 2

    def log_post(t):
        ll, mean, var = _given_tau(t, y, s2, mu_mean, mu_var)
        return ll - 0.5 * (t / tau_scale) ** 2, mean, var

    upper = 20.0 * max(tau_scale, float(np.std(y)) + float(np.sqrt(s2.max())))
    for _ in range(20):
        wide = np.linspace(0.0, upper, n_grid)
        lp = log_post(wide)[0]
        keep = np.flatnonzero(lp > lp.max() - 40.0)
        if keep[-1] < n_grid - 1:
            break
        upper *= 4.0
    lo, hi = wide[max(keep[0] - 1, 0)], wide[min(keep[-1] + 1, n_grid - 1)]
    grid = np.linspace(lo, hi, n_grid)
    lp, mean, var = log_post(grid)
    dens = np.exp(lp - lp.max())
    h = grid[1] - grid[0]
    dens /= h * (dens.sum() - 0.5 * (dens[0] + dens[-1]))
    return TauPosterior(grid, dens, mean, var)


def map_draws(post: TauPosterior, y, se, mu_mean: float, mu_sd: float, n_draws: int = N_DRAWS, seed: int = SEED) -> dict:
    """Exact draws of (tau, mu, theta*) given y from a scrambled Sobol sequence of their three uniforms (module
    docstring): tau from the grid posterior, mu | tau, y and theta* | mu, tau ~ Normal(mu, tau^2) computed at each drawn
    tau. The first n_draws points of a 2^m-point sequence (a power of 2 keeps its balance)."""
    m = max(1, math.ceil(math.log2(n_draws)))
    u = qmc.Sobol(d=3, scramble=True, seed=seed).random_base2(m)[:n_draws].T
    u = np.clip(u, 1e-300, 1 - 1e-16)
    tau = post.sample(u[0])
    _, mean, var = _given_tau(tau, np.asarray(y, float), np.asarray(se, float) ** 2, mu_mean, float(mu_sd) ** 2)
    mu = mean + np.sqrt(var) * special.ndtri(u[1])
    theta = mu + tau * special.ndtri(u[2])
    return {"tau": tau, "mu": mu, "theta": theta}


def map_moments_by_quadrature(y, se, tau_scale: float, mu_mean: float, mu_sd: float) -> tuple[float, float]:
    """The MAP mean and SD by adaptive quadrature over tau, independently of the grid and the sampler: for each tau
    the joint normal of (theta*, y_1..y_H) (mean mu_mean; Var theta* = mu_sd^2 + tau^2, Cov(theta*, y_j) = mu_sd^2,
    Cov(y) = diag(s^2 + tau^2) + mu_sd^2), p(y | tau) by scipy.stats.multivariate_normal and E, Var of theta* | y by
    maths.gaussian.conditional_normal; then E[theta* | y] and E[theta*^2 | y] under p(tau | y) by
    scipy.integrate.quad_vec on [0, mode] and [mode, upper], the mode by scipy's bounded Brent search and the upper
    end where the log density has fallen by 50 (steps doubling from 1% of the smaller of tau_scale and the smallest
    standard error)."""
    y, s2 = np.asarray(y, float), np.asarray(se, float) ** 2
    h = len(y)
    v0 = float(mu_sd) ** 2
    given, target = np.arange(1, h + 1), np.array([0])

    def pieces(tau):
        cov = np.full((h + 1, h + 1), v0)
        cov[0, 0] += tau * tau
        cov[given, given] += s2 + tau * tau
        mean = np.full(h + 1, float(mu_mean))
        _, cvar, cmean = conditional_normal(mean, cov, given, target, y[None, :])
        loglik = stats.multivariate_normal.logpdf(y, mean[1:], cov[1:, 1:])
        return loglik + stats.halfnorm.logpdf(tau, scale=tau_scale), float(cmean[0, 0]), float(cvar[0, 0])

    width = 0.01 * min(tau_scale, float(np.sqrt(s2.min())))
    upper = 50.0 * max(tau_scale, float(np.std(y)) + float(np.sqrt(s2.max())))
    best = optimize.minimize_scalar(lambda t: -pieces(t)[0], bounds=(0.0, upper), method="bounded",
                                    options={"xatol": 0.01 * width})
    mode, top = float(best.x), -float(best.fun)
    if pieces(0.0)[0] > top:
        mode, top = 0.0, pieces(0.0)[0]
    step = width
    while pieces(mode + step)[0] > top - 50.0:
        step *= 2.0
    below = 0.0 if mode == 0.0 else max(0.0, mode - step)

    def integrand(tau):
        lp, m, v = pieces(tau)
        f = math.exp(lp - top)
        return np.array([f, f * m, f * (v + m * m)])

    total = sum(integrate.quad_vec(integrand, a, b, epsabs=0.0, epsrel=1e-10, limit=2000)[0]
                for a, b in ((below, mode), (mode, mode + step)) if b > a)
    mean = total[1] / total[0]
    return float(mean), float(math.sqrt(total[2] / total[0] - mean**2))


# ---------------------------------------------------------------- the mixture approximation


def em_normal_mixture(x, start: NormalMixture, max_iter: int = 500, tol: float = 1e-6) -> tuple[NormalMixture, float, int]:
    """EM of a normal mixture to the sample x from `start`, accelerated by SQUAREM (Varadhan and Roland 2008, Scand J
    Stat 35:335: two EM steps, a squared extrapolation of them in (log weights, means, log SDs), one EM step from there,
    kept only when it does not lower the log-likelihood, else the second plain EM step). Stops when an iteration gains
    less than tol per draw. Returns (mixture, its log-likelihood, iterations). SDs are kept above 1e-6 of the sample's SD.
    """
    x = np.asarray(x, float)
    xc = x[:, None]
    n = len(x)
    k = len(start)
    floor = 1e-6 * float(np.std(x))

    def e_step(theta):
        logw = theta[:k] - special.logsumexp(theta[:k])
        m, s = theta[k : 2 * k], np.exp(theta[2 * k :])
        z = (xc - m) / s
        comp = (logw - np.log(s)) - 0.5 * z * z
        top = comp.max(axis=1, keepdims=True)
        e = np.exp(comp - top)
        tot = e.sum(axis=1, keepdims=True)
        ll = float((top[:, 0] + np.log(tot[:, 0])).sum()) - 0.5 * n * _LOG_2PI
        return (ll if np.isfinite(ll) else -np.inf), e / tot

    def m_step(r):
        nk = np.maximum(r.sum(axis=0), 1e-300)
        m = (x @ r) / nk
        d = xc - m
        s = np.maximum(np.sqrt(np.einsum("nk,nk->k", r, d * d) / nk), floor)
        return np.concatenate([np.log(nk / n), m, np.log(s)])

    with np.errstate(divide="ignore"):
        theta0 = np.concatenate([np.maximum(np.log(start.weights), -700.0), start.means, np.log(start.sds)])
    ll0, r0 = e_step(theta0)
    it = 0
    for it in range(1, max_iter + 1):
        theta1 = m_step(r0)
        ll1, r1 = e_step(theta1)
        theta2 = m_step(r1)
        ll2, r2 = e_step(theta2)
        step, curve = theta1 - theta0, theta2 - 2 * theta1 + theta0
        size = float(np.linalg.norm(curve))
        best = (ll2, theta2, r2)
        if size > 0:
            alpha = min(-1.0, -float(np.linalg.norm(step)) / size)
            with np.errstate(over="ignore", invalid="ignore"):
                llp, rp = e_step(theta0 - 2 * alpha * step + alpha * alpha * curve)
            if np.isfinite(llp):
                theta3 = m_step(rp)
                ll3, r3 = e_step(theta3)
                if ll3 >= ll2:
                    best = (ll3, theta3, r3)
        gain = best[0] - ll0
        ll0, theta0, r0 = best
        if gain < tol * n:
            break
    w = np.exp(theta0[:k] - special.logsumexp(theta0[:k]))
    keep = w > 1e-12
    return NormalMixture(w[keep], theta0[k : 2 * k][keep], np.exp(theta0[2 * k :])[keep]), ll0, it


def _starts(x, k: int) -> list[NormalMixture]:
    """Two EM starts for k components: means spread over the quantiles with narrow SDs; and nested components
    around the median with SDs from 0.3 to 2 times the sample's (a heavy-tailed, scale-mixture shape)."""
    sd = float(np.std(x))
    spread = NormalMixture(np.full(k, 1.0 / k), np.quantile(x, (np.arange(k) + 0.5) / k), np.full(k, sd / k))
    nested = NormalMixture(np.full(k, 1.0 / k), np.full(k, float(np.median(x))), sd * np.geomspace(0.3, 2.0, k))
    return [spread, nested]


def fit_mixture(x, max_components: int = MAX_COMPONENTS, criterion: str = "aic", aic_penalty: float = AIC_PENALTY,
                tol: float = 1e-6) -> tuple[NormalMixture, list[dict]]:
    """The normal mixture of 1..max_components components with the best information criterion (module docstring)
    fitted by EM to the sample x; returns it and one row per K (components, log-likelihood, criterion, iterations)."""
    x = np.asarray(x, float)
    if criterion not in ("aic", "bic"):
        raise ValueError(f"criterion must be 'aic' or 'bic', got {criterion!r}")
    penalty = aic_penalty if criterion == "aic" else math.log(len(x))
    rows, fits = [], []
    for k in range(1, max_components + 1):
        if k == 1:
            mix = NormalMixture([1.0], [float(x.mean())], [float(x.std())])
            ll, it = float(stats.norm(mix.means[0], mix.sds[0]).logpdf(x).sum()), 0
        else:
            mix, ll, it = max((em_normal_mixture(x, s, tol=tol) for s in _starts(x, k)), key=lambda r: r[1])
        n_par = 3 * len(mix) - 1
        rows.append({"components": k, "fitted_components": len(mix), "loglik": ll, criterion: -2 * ll + penalty * n_par,
                     "iterations": it})
        fits.append(mix)
    best = int(np.argmin([r[criterion] for r in rows]))
    return fits[best], rows


def approximation_accuracy(mix: NormalMixture, draws, exact: NormalMixture, n_grid: int = 2001) -> dict:
    """How well the mixture matches the MAP: the Kolmogorov distance to the draws' empirical CDF and to the exact MAP CDF
    (on a grid over the exact MAP's mean +- 10 SD), KL(exact || mixture) by the trapezoid rule on that grid, and the
    means and SDs of the three."""
    x = np.sort(np.asarray(draws, float))
    n = len(x)
    f = mix.cdf(x)
    ks_draws = float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))
    grid = np.linspace(exact.mean - 10 * exact.sd, exact.mean + 10 * exact.sd, n_grid)
    ks_exact = float(np.abs(exact.cdf(grid) - mix.cdf(grid)).max())
    lp, lq = exact.logpdf(grid), mix.logpdf(grid)
    kl = float(integrate.trapezoid(np.exp(lp) * (lp - lq), grid))
    return {"kolmogorov_to_draws": ks_draws, "kolmogorov_to_exact": ks_exact, "kl_exact_to_mixture": kl,
            "mean": {"exact": exact.mean, "draws": float(x.mean()), "mixture": mix.mean},
            "sd": {"exact": exact.sd, "draws": float(x.std()), "mixture": mix.sd}}


# ---------------------------------------------------------------- the MAP prior


@dataclass(frozen=True, eq=False)
class MapPrior:
    """A fitted MAP prior and everything reported about it (`to_dict`, `to_json`: map_prior.json)."""

    studies: tuple[str, ...]
    n: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    settings: dict  # sigma and its source, tau and mu priors, draws, seed, criterion, robust weight
    tau: dict  # posterior summary of the between-trial SD
    mu: dict  # posterior mean and SD of the trials' mean
    moments: dict  # the MAP's mean and SD: by quadrature (the check), from the draws, of the grid density
    mixture: NormalMixture  # the MAP's mixture approximation
    robust: NormalMixture  # the mixture with the vague component last
    ess: dict  # {"map": {"elir", "moment"}, "robust": {...}} in participants with SD sigma
    accuracy: dict  # approximation_accuracy plus the fits of each K
    draws: dict = field(repr=False)  # tau, mu, theta
    exact: NormalMixture = field(repr=False)  # the MAP density on the tau grid

    @property
    def sigma(self) -> float:
        return float(self.settings["sigma"])

    def check(self, estimate: float, se: float) -> dict:
        """Prior-data conflict with a new control arm's estimate (mean change) and SE: the two-sided predictive
        p-value under the MAP mixture, and the robust prior's posterior (the vague component's weight before and
        after the data, the posterior mean and SD)."""
        if not se > 0:
            raise ValueError(f"the new control estimate's SE must be positive, got {se}")
        post = self.robust.posterior(estimate, se)
        robust = self.settings["robust_weight"] > 0
        return {"estimate": float(estimate), "se": float(se), "p_value": conflict_pvalue(self.mixture, estimate, se),
                "vague_weight_prior": float(self.robust.weights[-1]) if robust else None,
                "vague_weight_posterior": float(post.weights[-1]) if robust else None,
                "posterior_mean": post.mean, "posterior_sd": post.sd}

    def to_dict(self) -> dict:
        return {
            "model": "y_j ~ Normal(theta_j, (sd_j / sqrt(n_j))^2); theta_j ~ Normal(mu, tau^2); "
                     f"mu ~ Normal({self.settings['mu_prior_mean']:g}, {self.settings['mu_prior_sd']:.6g}^2); "
                     f"tau ~ HalfNormal({self.settings['tau_scale']:.6g}); MAP prior = theta* | y",
            "historical": [{"study": s, "n": int(k), "mean": float(m), "sd": float(d)}
                           for s, k, m, d in zip(self.studies, self.n, self.mean, self.sd)],
            "settings": self.settings,
            "tau_posterior": self.tau,
            "mu_posterior": self.mu,
            "map": self.moments,
            "mixture": self.mixture.to_dict(),
            "robust_mixture": {**self.robust.to_dict(),
                               "vague_component": len(self.robust) - 1 if self.settings["robust_weight"] > 0 else None},
            "ess": self.ess,
            "approximation": self.accuracy,
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def fit_map_prior(study, n, mean, sd, *, sigma: float | None = None, tau_scale: float | None = None,
                  mu_prior: tuple[float, float] | None = None, robust_weight: float = ROBUST_WEIGHT, n_draws: int = N_DRAWS,
                  seed: int = SEED, max_components: int = MAX_COMPONENTS, criterion: str = "aic",
                  aic_penalty: float = AIC_PENALTY, source: str | None = None) -> MapPrior:
    """The (robust) MAP prior of a new trial's control mean from historical trials (one entry per trial: its name,
    control arm size, mean change and SD of the change; data.historical.read_historical reads them from a CSV).

    sigma: the unit SD (default: `pooled_sd`); tau_scale: the HalfNormal scale of tau (default sigma / 2);
    mu_prior: (mean, SD) of mu (default (0, `default_mu_sd`)); robust_weight: the vague component's weight (0: none).
    """
    study = tuple(str(s) for s in study)
    n, y, sd = (np.asarray(v, dtype=float) for v in (n, mean, sd))
    h = len(y)
    if not (len(study) == len(n) == h == len(sd)):
        raise ValueError("study, n, mean and sd need one entry per trial")
    if h < 2:
        raise ValueError(f"a MAP prior needs at least 2 historical trials, got {h}")
    if not (np.isfinite(y).all() and np.isfinite(n).all() and np.isfinite(sd).all()) or (n < 2).any() or (sd <= 0).any():
        raise ValueError("every trial needs a finite mean, n >= 2 and sd > 0")
    if not 0 <= robust_weight < 1:
        raise ValueError(f"the robust weight must be in [0, 1), got {robust_weight}")
    given_sigma = sigma is not None
    sigma = float(sigma) if given_sigma else pooled_sd(n, sd)
    if not sigma > 0:
        raise ValueError(f"the unit SD sigma must be positive, got {sigma}")
    tau_scale = TAU_SCALE_FACTOR * sigma if tau_scale is None else float(tau_scale)
    if not tau_scale > 0:
        raise ValueError(f"the scale of tau's HalfNormal prior must be positive, got {tau_scale}")
    mu_mean, mu_sd = (0.0, default_mu_sd(y, sigma)) if mu_prior is None else (float(mu_prior[0]), float(mu_prior[1]))
    se = sd / np.sqrt(n)

    post = tau_posterior(y, se, tau_scale, mu_mean, mu_sd)
    draws = map_draws(post, y, se, mu_mean, mu_sd, n_draws, seed)
    exact = post.predictive()
    q_mean, q_sd = map_moments_by_quadrature(y, se, tau_scale, mu_mean, mu_sd)
    mix, fits = fit_mixture(draws["theta"], max_components, criterion, aic_penalty)
    robust = mix.robustify(robust_weight, sigma) if robust_weight > 0 else mix
    accuracy = {**approximation_accuracy(mix, draws["theta"], exact), "fits": fits}
    settings = {
        "sigma": sigma, "sigma_source": "given" if given_sigma else "pooled: sqrt(sum n / sum(n / sd^2))",
        "tau_prior": "HalfNormal", "tau_scale": tau_scale, "tau_scale_over_sigma": tau_scale / sigma,
        "mu_prior": "Normal", "mu_prior_mean": mu_mean, "mu_prior_sd": mu_sd,
        "n_draws": int(n_draws), "seed": int(seed), "sampler": "exact draws: tau from its grid posterior, mu and theta* from their normals given tau; "
                   "scrambled Sobol uniforms",
        "grid_points": len(post.tau), "criterion": criterion,
        **({"aic_penalty": aic_penalty} if criterion == "aic" else {}), "max_components": max_components,
        "robust_weight": float(robust_weight), "vague_mean": float(robust.means[-1]) if robust_weight > 0 else None,
        "vague_sd": sigma if robust_weight > 0 else None, "source": source,
    }
    ess = {name: {"elir": ess_elir(m, sigma), "moment": ess_moment(m, sigma)}
           for name, m in (("map", mix), ("robust", robust))}
    ess["historical_total_n"] = float(n.sum())
    moments = {"quadrature": {"mean": q_mean, "sd": q_sd},
               "draws": {"mean": float(draws["theta"].mean()), "sd": float(draws["theta"].std())},
               "grid": {"mean": exact.mean, "sd": exact.sd}}
    return MapPrior(study, n, y, sd, settings, post.summary(), post.mu_summary(), moments, mix, robust, ess, accuracy,
                    draws, exact)


# ---------------------------------------------------------------- a mixture prior on the control mean in an analysis


@dataclass(frozen=True, eq=False)
class MixtureArray:
    """A batch of normal mixtures: weights, means and sds of shape (..., K), the weights summing to 1 over the last axis
    (the posterior of one quantity in each of many trials; module docstring)."""

    weights: np.ndarray
    means: np.ndarray
    sds: np.ndarray

    def cdf(self, x, df=None) -> np.ndarray:
        """P(X <= x) per mixture; with `df` (broadcasting to the batch shape) each component has Student-t tails on df
        degrees of freedom: sum_k w_k T_df((x - m_k) / s_k)."""
        z = (np.asarray(x, dtype=float)[..., None] - self.means) / self.sds
        p = special.ndtr(z) if df is None else special.stdtr(np.asarray(df, dtype=float)[..., None], z)
        return (self.weights * p).sum(axis=-1)

    @property
    def mean(self) -> np.ndarray:
        return (self.weights * self.means).sum(axis=-1)

    @property
    def var(self) -> np.ndarray:
        return (self.weights * (self.sds**2 + self.means**2)).sum(axis=-1) - self.mean**2

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.var, 0.0))

    def quantile(self, q: float, df=None, iterations: int = 60) -> np.ndarray:
        """The q-quantile of each mixture by bisection between the components' smallest and largest q-quantiles
        (60 halvings: to about 1e-18 of that bracket); `df` as in `cdf`."""
        if not 0 < q < 1:
            raise ValueError(f"quantile level must be in (0, 1), got {q}")
        z = special.ndtri(q) if df is None else special.stdtrit(np.asarray(df, dtype=float)[..., None], q)
        ends = self.means + self.sds * z
        lo, hi = ends.min(axis=-1), ends.max(axis=-1)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid, df) < q
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return 0.5 * (lo + hi)


def control_prior_posterior(prior: NormalMixture, c_hat, d_hat, s_cc, s_cd, s_dd, effect_prior_sd: float | None = None
                            ) -> tuple[MixtureArray, MixtureArray]:
    """The posterior of a control mean c and an effect d under the mixture prior `prior` on c (module docstring):
    (c_hat, d_hat) with covariance [[s_cc, s_cd], [s_cd, s_dd]] is the normal posterior of (c, d) with a flat prior on
    c (or their likelihood, with `effect_prior_sd` the SD of a Normal(0, sd^2) prior on d to add first). The inputs
    broadcast to one batch shape; returns (c's posterior, d's posterior), mixtures of len(prior) components each."""
    c_hat, d_hat, s_cc, s_cd, s_dd = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (c_hat, d_hat, s_cc, s_cd, s_dd)))

    def joint(c, d, vcc, vcd, vdd):  # (c, d) as a bivariate normal: mean (..., 2), covariance (..., 2, 2)
        return np.stack([c, d], axis=-1), np.stack([np.stack([vcc, vcd], axis=-1), np.stack([vcd, vdd], axis=-1)], axis=-2)

    if effect_prior_sd is not None:  # d's own prior first: its marginal updated, c | d kept
        mu_d, v_d = conjugate_normal(0.0, float(effect_prior_sd) ** 2, d_hat, s_dd)
        coef, resid, _ = conditional_normal(*joint(c_hat, d_hat, s_cc, s_cd, s_dd), [1], [0])
        b, resid = coef[..., 0, 0], resid[..., 0, 0]
        c_hat, s_cc, s_cd = c_hat + b * (mu_d - d_hat), resid + b * b * v_d, b * v_d
        d_hat, s_dd = mu_d, v_d
    m, s2 = prior.means, prior.sds**2
    c, vc = c_hat[..., None], s_cc[..., None]
    log_w = _batch_logw(prior, c, vc)
    weights = np.exp(log_w - special.logsumexp(log_w, axis=-1, keepdims=True))
    mc, vck = conjugate_normal(m, s2, c, vc)
    slope, resid, cond_mean = conditional_normal(*joint(c_hat, d_hat, s_cc, s_cd, s_dd), [0], [1], mc[..., None])
    slope, resid = slope[..., 0, 0][..., None], resid[..., 0, 0][..., None]
    vd = resid + slope**2 * vck
    return MixtureArray(weights, mc, np.sqrt(vck)), MixtureArray(weights, cond_mean[..., 0], np.sqrt(np.maximum(vd, 0.0)))


def _batch_logw(prior: NormalMixture, c, vc) -> np.ndarray:
    """(..., K): log w_k + log Normal(c; m_k, s_k^2 + vc) for a batch of estimates c (..., 1) with variances vc (..., 1)
    (what `NormalMixture.convolve(se).component_logpdf` gives for one estimate)."""
    with np.errstate(divide="ignore"):
        logw = np.log(prior.weights)
    total = prior.sds**2 + vc
    return logw - 0.5 * (np.log(total) + _LOG_2PI) - 0.5 * (c - prior.means) ** 2 / total
