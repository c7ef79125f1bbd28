"""The MMRM of a simulated trial in closed form, vectorised over many trials at once.

Model (the frequentist primary analysis of a depression trial; models/mmrm.py is its Bayesian form):

    c_iv = y_iv - y_i0,   v = 1..V the post-baseline visits of the schedule
    c_i ~ MvNormal(B x_i, Sigma) over the visits participant i attended,   x_i = (1, T_i1, ..., T_iA, y_i0 - ybar_0)
    B (V x Q), Q = A + 2: visit means, each active arm x visit (its difference from the control arm),
    baseline x visit;  Sigma unstructured (V x V)

Participants attend a prefix of the visits (monotone dropout; at an interim look, the visits they
have reached so far): pattern p holds those who attended the first p + 1 visits. Everything the
likelihood needs is, per pattern, n_p and the sums Sxx_p = sum x x', Scx_p = sum c x', Scc_p = sum c c'
(the attended block of c, zero elsewhere), so one trial of any size costs V small matrices.

Given Sigma, with W_p = (Sigma_p)^-1 padded with zeros (Sigma_p: the leading p + 1 block; for a
prefix, W_p = sum_{r <= p} m_r m_r' over the rows m_r of L^-1, L = chol(Sigma)):

    H = sum_p W_p (x) Sxx_p,   g = sum_p vec(W_p Scx_p),   vec(B) = H^-1 g   (generalised least squares)
    Cov(vec B) = H^-1

Sigma by REML:  l_R = -1/2 sum_p [n_p log|Sigma_p| + tr(W_p R_p)] - 1/2 log|H|,  R_p = sum_i r_i r_i'
with r_i the attended residuals. Its gradient in Sigma is G = 1/2 sum_p (W_p (R_p + Q_p) W_p - n_p W_p)
with Q_p[v, u] = tr(H^-1_{vu} Sxx_p) (the REML term). Newton steps on the distinct entries of Sigma
(`fit_reml`: the Hessian from the average information and the expected information, both from the
pattern sums), halving a step that would leave Sigma not positive definite or lower l_R, from the
available-case estimate, until the predicted gain in l_R is below 1e-10 (usually 5-8 steps). With
complete data this is ordinary least squares at each visit and
Sigma = residual cross-products / (n - Q), so the primary-visit estimates and SEs equal the ANCOVA's.
A coefficient no participant informs (an arm with nobody at a visit) is left out of the solve (its row
and column of H carry a 1 on the diagonal), and that arm's estimate there counts as a failed analysis.

The posterior of the treatment difference (`mmrm_effect` with prior SDs) is the Bayesian MMRM's exact
conditional posterior given Sigma = its REML estimate: the normal priors of all mean coefficients added
to H (`gls` with `prior_precision`), so the prior on the other visits' effects, visit means and slopes
acts through their correlation with the primary visit's effect, as it does in the Bayesian MMRM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maths.gaussian import duplication_matrix

Q = 3  # regressors per visit of a two-arm trial: intercept, treatment, centred baseline (A + 2 with A active arms)
TOL = 1e-10  # converged when the largest step is below this fraction of the largest variance,
DECREMENT = 1e-10  # or the step's predicted gain in the REML log-likelihood is below this
MAX_ITER = 40


@dataclass
class PatternStats:
    """Sufficient statistics per trial (S) and pattern (p = 0..V-1: attended the first p + 1 visits)."""

    n: np.ndarray  # (S, V)
    sxx: np.ndarray  # (S, V, Q, Q)
    scx: np.ndarray  # (S, V, V, Q), rows beyond the pattern's visits are 0
    scc: np.ndarray  # (S, V, V, V), zero outside the pattern's block
    n_arm: np.ndarray  # (S, V, K): participants attending each visit, per arm (control first)

    @property
    def n_visits(self) -> int:
        return self.n.shape[1]

    @property
    def n_regressors(self) -> int:
        """Q = A + 2: intercept, one indicator per active arm, centred baseline."""
        return self.sxx.shape[-1]

    def take(self, rows: np.ndarray) -> "PatternStats":
        return PatternStats(self.n[rows], self.sxx[rows], self.scx[rows], self.scc[rows], self.n_arm[rows])

    @property
    def n_trials(self) -> int:
        return self.n.shape[0]


def pattern_stats(change: np.ndarray, attended: np.ndarray, arm: np.ndarray, baseline: np.ndarray, n_active: int | None = None) -> PatternStats:
    """change (S, N, V) post-baseline change from baseline (values past `attended` are ignored),
    attended (S, N) number of post-baseline visits attended (a prefix: 0..V), arm (N,) or (S, N) the arm
    index (0 control, a the a-th of `n_active` active arms; default the largest index; a two-arm trial's
    0/1 treatment indicator is its arm index), baseline (S, N) week-0 scores. Participants with no
    post-baseline visit are left out, and the baseline is centred on the mean of those included, as in
    models/mmrm.py."""
    s, n, v = change.shape
    attended = np.asarray(attended)
    arm = np.broadcast_to(np.asarray(arm).astype(int), (s, n))
    n_active = max(int(arm.max()), 1) if n_active is None else int(n_active)
    indicator = (arm[:, :, None] == np.arange(1, n_active + 1)).astype(float)  # (S, N, A)
    included = attended >= 1
    n_inc = included.sum(axis=1)
    centre = np.where(included, baseline, 0.0).sum(axis=1) / np.maximum(n_inc, 1)
    x = np.concatenate([np.ones((s, n, 1)), indicator, (baseline - centre[:, None])[:, :, None]], axis=2)  # (S, N, Q)
    Q = n_active + 2  # the regressors per visit (module docstring)
    seen = np.arange(v)[None, None, :] < attended[:, :, None]  # (S, N, V)
    c = np.where(seen, change, 0.0)
    onehot = (attended[:, :, None] - 1 == np.arange(v)[None, None, :]).astype(float)  # (S, N, V patterns)
    ot = onehot.transpose(0, 2, 1)  # (S, P, N)
    n_p = onehot.sum(axis=1)
    sxx = (ot @ (x[:, :, :, None] * x[:, :, None, :]).reshape(s, n, Q * Q)).reshape(s, v, Q, Q)
    scx = (ot @ (c[:, :, :, None] * x[:, :, None, :]).reshape(s, n, v * Q)).reshape(s, v, v, Q)
    scc = (ot @ (c[:, :, :, None] * c[:, :, None, :]).reshape(s, n, v * v)).reshape(s, v, v, v)
    arms = np.concatenate([1.0 - indicator.sum(axis=2, keepdims=True), indicator], axis=2)  # (S, N, K)
    n_arm = np.einsum("snv,sna->sva", seen.astype(float), arms)
    return PatternStats(n_p, sxx, scx, scc, n_arm)


def _block_masks(v: int) -> np.ndarray:
    """(P, V, V): pattern p's attended block."""
    k = np.arange(v)
    inside = k[None, :] <= k[:, None]  # (P, V): visit u attended in pattern p
    return inside[:, :, None] & inside[:, None, :]


def _chol(sigma: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched Cholesky factors, column by column (V is small); trials not `ok`, not finite or not positive
    definite get the identity and ok=False."""
    v = sigma.shape[-1]
    a = np.where(ok[:, None, None] & np.isfinite(sigma).all(axis=(1, 2))[:, None, None], sigma, np.nan)
    lower = np.zeros_like(a)
    good = ok & np.isfinite(a[:, 0, 0])
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing (non-finite) trials are flagged below
        for j in range(v):
            d = a[:, j, j] - (lower[:, j, :j] ** 2).sum(axis=1)
            good &= np.isfinite(d) & (d > 1e-12 * np.abs(a[:, j, j]))
            root = np.sqrt(np.where(good, d, 1.0))
            lower[:, j, j] = root
            if j + 1 < v:
                lower[:, j + 1 :, j] = (a[:, j + 1 :, j] - np.einsum("sik,sk->si", lower[:, j + 1 :, :j], lower[:, j, :j])) / root[:, None]
    lower = np.where(good[:, None, None], lower, np.eye(v))
    return lower, good


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """Inverse of batched lower-triangular matrices by forward substitution (V small)."""
    v = lower.shape[-1]
    inv = np.zeros_like(lower)
    for i in range(v):
        inv[:, i, i] = 1.0 / lower[:, i, i]
        for j in range(i):
            inv[:, i, j] = -np.einsum("sk,sk->s", lower[:, i, j:i], inv[:, j:i, j]) / lower[:, i, i]
    return inv


def _inv_sym(a: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse and log-determinant of symmetric positive definite matrices (batched; bad ones flagged)."""
    eye = np.eye(a.shape[-1])
    safe = np.where(ok[:, None, None] & np.isfinite(a).all(axis=(1, 2))[:, None, None], a, eye)
    try:
        lower = np.linalg.cholesky(safe)
    except np.linalg.LinAlgError:  # rare: find the trials that are not positive definite
        lower, ok = _chol(safe, ok & np.isfinite(a).all(axis=(1, 2)))
    ok = ok & np.isfinite(a).all(axis=(1, 2))
    linv = np.linalg.solve(lower, np.broadcast_to(eye, lower.shape))
    inv = linv.transpose(0, 2, 1) @ linv
    logdet = 2 * np.log(np.diagonal(lower, axis1=1, axis2=2)).sum(axis=1)
    return inv, logdet, ok


@dataclass
class GLS:
    beta: np.ndarray  # (S, V, Q)
    cov: np.ndarray  # (S, V*Q, V*Q)
    w: np.ndarray  # (S, P, V, V)
    logdet_p: np.ndarray  # (S, P)
    logdet_h: np.ndarray  # (S,)
    ok: np.ndarray  # (S,)


def _pattern_weights(sigma: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W_p (S, P, V, V), log|Sigma_p| (S, P) and ok: the leading blocks' inverses from one Cholesky factor."""
    lower, ok = _chol(sigma, ok)
    linv = _lower_inverse(lower)  # (S, V, V)
    w = np.cumsum(linv[:, :, :, None] * linv[:, :, None, :], axis=1)  # W_p = sum_{r <= p} m_r m_r'
    logdet_p = 2 * np.cumsum(np.log(np.diagonal(lower, axis1=1, axis2=2)), axis=1)
    return w, logdet_p, ok


def _kron_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum_p a_p (x) b_p for a (S, P, m, m), b (S, P, k, k): (S, m*k, m*k) with index (i, j) -> i*k + j."""
    s, p, m, _ = a.shape
    k = b.shape[-1]
    out = a.reshape(s, p, m * m).transpose(0, 2, 1) @ b.reshape(s, p, k * k)  # (S, m*m, k*k)
    return out.reshape(s, m, m, k, k).transpose(0, 1, 3, 2, 4).reshape(s, m * k, m * k)


def gls(stats: PatternStats, sigma: np.ndarray, ok: np.ndarray | None = None, prior_precision: np.ndarray | None = None,
        prior_mean: np.ndarray | None = None) -> GLS:
    """Generalised least squares given Sigma (S, V, V); with `prior_precision` (V*Q,) a Normal(prior_mean,
    diag^-1) prior on vec(B) is added (then beta and cov are B's conditional posterior given Sigma)."""
    s, v = stats.n.shape
    Q = stats.n_regressors
    ok = np.ones(s, bool) if ok is None else ok.copy()
    w, logdet_p, ok = _pattern_weights(sigma, ok)
    h = _kron_sum(w, stats.sxx)
    if prior_precision is not None:
        h = h + np.diag(prior_precision)[None]
    diag = np.einsum("sjj->sj", h)
    if not diag.all():  # coefficients no participant informs (module docstring): out of the solve
        hole = diag == 0
        h = h + hole[:, :, None] * np.eye(v * Q)[None]
    g = (w @ stats.scx).sum(axis=1).reshape(s, v * Q)
    if prior_precision is not None and prior_mean is not None:
        g = g + (prior_precision * prior_mean)[None]
    cov, logdet_h, ok = _inv_sym(h, ok)
    beta = (cov @ g[:, :, None])[:, :, 0].reshape(s, v, Q)
    return GLS(beta, cov, w, logdet_p, logdet_h, ok)


def _residual_products(stats: PatternStats, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R_p = sum r r' on pattern p's attended block (S, P, V, V), and Rx_p = sum r x' (S, P, V, Q; rows
    outside the block are not meaningful and meet zeros of W_p wherever used)."""
    b = beta[:, None]  # (S, 1, V, Q)
    rx = stats.scx - b @ stats.sxx  # (S, P, V, Q)
    r = (stats.scc - b @ stats.scx.transpose(0, 1, 3, 2) - rx @ b.transpose(0, 1, 3, 2)) * _block_masks(stats.n_visits)[None]
    return r, rx


def reml_loglik(stats: PatternStats, sigma: np.ndarray, ok: np.ndarray | None = None):
    """REML log-likelihood (without the constant) at Sigma; also the GLS fit there, R_p and Rx_p."""
    fit = gls(stats, sigma, ok)
    r, rx = _residual_products(stats, fit.beta)
    tr = np.einsum("spvu,spuv->sp", fit.w, r)
    ll = -0.5 * (stats.n * fit.logdet_p + tr).sum(axis=1) - 0.5 * fit.logdet_h
    return np.where(fit.ok, ll, -np.inf), fit, r, rx


def _start(stats: PatternStats) -> tuple[np.ndarray, np.ndarray]:
    """Available-case estimate: per-visit least squares among those attending it, and residual
    cross-products among those attending both visits; its diagonal where not positive definite."""
    s, v = stats.n.shape
    Q = stats.n_regressors
    # participants attending visit u are patterns p >= u: reverse cumulative sums
    rc = lambda a: np.flip(np.cumsum(np.flip(a, axis=1), axis=1), axis=1)  # noqa: E731
    n_at, sxx_at, scx_at = rc(stats.n), rc(stats.sxx), rc(stats.scx)
    ok = (n_at[:, -1] > Q + 1)
    idx = np.arange(v)
    sxx_v = sxx_at[:, idx]  # (S, V, Q, Q): at visit u, among attendees of u
    scx_v = scx_at[:, idx, idx]  # (S, V, Q)
    hole = np.einsum("svjj->svj", sxx_v) == 0  # an arm with nobody at the visit: its coefficient left out (module docstring)
    if hole.any():
        sxx_v = sxx_v + hole[..., None] * np.eye(Q)
    good = ok & (np.linalg.det(sxx_v) > 1e-12 * np.prod(np.maximum(np.einsum("svjj->svj", sxx_v), 1e-300), axis=2)).all(axis=1)
    sxx_safe = np.where(good[:, None, None, None], sxx_v, np.eye(Q))
    beta = np.linalg.solve(sxx_safe, scx_v[..., None])[..., 0]  # (S, V, Q)
    r, _ = _residual_products(stats, beta)  # per pattern
    r_at = rc(r)  # (S, P, V, V): cross-products among attendees of p..
    hi = np.maximum(idx[:, None], idx[None, :])  # pair (v, u) is observed jointly by patterns >= max(v, u)
    sigma = r_at[:, hi, idx[:, None], idx[None, :]] / np.maximum(n_at[:, hi] - Q, 1)
    sigma = 0.5 * (sigma + sigma.transpose(0, 2, 1))
    _, pd = _chol(sigma, good)
    diag = np.einsum("svv->sv", sigma)
    sigma = np.where(pd[:, None, None], sigma, np.eye(v) * diag[:, :, None])
    return sigma, good & (diag > 0).all(axis=1)


@dataclass
class MMRMFit:
    beta: np.ndarray  # (S, V, Q)
    cov: np.ndarray  # (S, V*Q, V*Q)
    sigma: np.ndarray  # (S, V, V) REML estimate
    ok: np.ndarray  # (S,)
    iterations: int
    loglik: np.ndarray  # (S,) REML log-likelihood (without the constant)

    def effect(self, visit: int, arm: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Difference of active arm `arm` (0-based) from control at post-baseline visit index `visit` and its model-based SE."""
        j = visit * self.beta.shape[2] + 1 + arm
        return self.beta[:, visit, 1 + arm], np.sqrt(self.cov[:, j, j])


def _newton_terms(stats: PatternStats, fit: GLS, r: np.ndarray, rx: np.ndarray, dup: np.ndarray):
    """REML gradient in the distinct entries theta of Sigma, the average information AI (Gilmour,
    Thompson and Cullis 1995) and (nearly) the expected information F, all from the pattern sums. With P the
    REML projection and S_a = dSigma/dtheta_a on each participant's attended block:
        grad_a = 1/2 (y'P S_a P y - tr(P S_a)),   AI_ab = 1/2 y'P S_a P S_b P y,   F_ab = 1/2 tr(P S_a P S_b),
    and the REML Hessian is -(2 AI - F) (Sigma is linear in theta)."""
    s, v = stats.n.shape
    Q = stats.n_regressors
    w, cov = fit.w, fit.cov
    vq = v * Q
    c_vu = cov.reshape(s, v, Q, v, Q).transpose(0, 1, 3, 2, 4).reshape(s, v * v, Q * Q)
    q = (stats.sxx.reshape(s, v, Q * Q) @ c_vu.transpose(0, 2, 1)).reshape(s, v, v, v) * _block_masks(v)[None]  # Q_p = tr(C_vu Sxx_p)
    grad = 0.5 * (w @ (r + q) @ w - stats.n[:, :, None, None] * w).sum(axis=1)
    grad_t = grad.reshape(s, v * v) @ dup
    # AI = 1/2 [sum_p tr(S_a W S_b U_p) - M_a' C M_b],  U_p = W R_p W,  M_a = X'V^-1 S_a P y = sum_p vec(W S_a W Rx_p)
    u = w @ r @ w
    y = w @ rx
    m = (w.transpose(0, 2, 3, 1).reshape(s, v * v, -1) @ y.transpose(0, 1, 3, 2).reshape(s, -1, Q * v))
    m = m.reshape(s, v, v, Q, v).transpose(0, 1, 3, 2, 4).reshape(s, vq, v * v) @ dup
    ai = 0.5 * (dup.T @ _kron_sum(w, u) @ dup - m.transpose(0, 2, 1) @ cov @ m)
    # F = 1/2 [sum_p n_p tr(S_a W S_b W) - 2 sum_p tr(S_a W S_b W Q_p W) + tr(C N_a C N_b)],  N_a = X'V^-1 S_a V^-1 X;
    # the last term, smaller by a further factor (parameters / participants), is left out: it would cost
    # more than the iterations it saves
    t12 = _kron_sum(w, stats.n[:, :, None, None] * w - 2 * (w @ q @ w))
    fisher = 0.5 * (dup.T @ t12 @ dup)
    return grad_t, ai, fisher


def _solve(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched solve of a x = b (a: (S, m, m), b: (S, m)); a singular system gives x = 0 and ok=False."""
    try:
        return np.linalg.solve(a, b[..., None])[..., 0], np.ones(len(a), bool)
    except np.linalg.LinAlgError:  # rare: solve trial by trial
        x, ok = np.zeros_like(b), np.ones(len(a), bool)
        for i in range(len(a)):
            try:
                x[i] = np.linalg.solve(a[i], b[i])
            except np.linalg.LinAlgError:
                ok[i] = False
        return x, ok


def _newton_step(stats: PatternStats, sigma: np.ndarray, ll: np.ndarray, fit: GLS, r: np.ndarray, rx: np.ndarray, dup, tril):
    """One iteration for the trials given (all active): returns the new Sigma, whether each trial is still
    iterating, and whether it is still a valid fit."""
    s, v = stats.n.shape
    rows, cols = tril
    eye = np.eye(len(rows))
    ok = np.ones(s, bool)
    grad_t, ai, fisher = _newton_terms(stats, fit, r, rx, dup)
    ok &= np.isfinite(grad_t).all(axis=1) & np.isfinite(ai).all(axis=(1, 2)) & np.isfinite(fisher).all(axis=(1, 2))
    grad_t = np.where(ok[:, None], grad_t, 0.0)
    hess = np.where(ok[:, None, None], 2 * ai - fisher, eye)
    _, newton = _chol(hess, ok)
    step, solved = _solve(np.where(newton[:, None, None], hess, np.where(ok[:, None, None], ai, eye)), grad_t)
    use = solved & (newton | ((step * grad_t).sum(axis=1) > 0))
    if not use[ok].all():
        alt, alt_ok = _solve(np.where(ok[:, None, None], fisher, eye), grad_t)
        step = np.where(use[:, None], step, alt)
        ok &= use | alt_ok
    decrement = (step * grad_t).sum(axis=1)  # predicted gain in l_R (Newton's)
    moving = ok & (np.abs(decrement) > DECREMENT)  # below it: converged, the last step is taken as it is
    step = np.where(ok[:, None], step, 0.0)
    delta = np.zeros((s, v, v))
    delta[:, rows, cols] = step
    delta[:, cols, rows] = step
    scale = np.maximum(np.abs(np.einsum("svv->sv", sigma)).max(axis=1), 1e-300)
    size = np.where(moving, np.abs(step).max(axis=1) / scale, 0.0)
    t = np.ones(s)
    accepted = ~moving
    new_sigma = sigma.copy()
    last = ok & ~moving
    if last.any():
        _, pd = _chol(sigma + delta, last)
        new_sigma[pd] = (sigma + delta)[pd]
    for _ in range(30):  # step halving, on the trials still halving only
        todo = np.flatnonzero(~accepted)
        if not len(todo):
            break
        cand = sigma[todo] + t[todo, None, None] * delta[todo]
        cll, cfit, _, _ = reml_loglik(stats.take(todo), cand)
        good = cfit.ok & (cll >= ll[todo] - 1e-9 * np.abs(ll[todo]))
        new_sigma[todo[good]] = cand[good]
        accepted[todo[good]] = True
        t[todo[~good]] *= 0.5
    ok &= accepted | (size < 1e-4)  # no ascent along the step: at the optimum to rounding, or a failed fit
    return new_sigma, moving & accepted & (size > TOL), ok


def fit_reml(stats: PatternStats, max_iter: int = MAX_ITER) -> MMRMFit:
    """REML estimate of Sigma by Newton's method, then GLS (module docstring).

    The step is Newton's where the REML Hessian -(2 AI - F) is negative definite, else the average-
    information step where it is an ascent direction, else Fisher scoring's (F is positive definite);
    it is halved until Sigma stays positive definite and l_R does not decrease. A trial whose step
    cannot be taken while still far from convergence (relative step > 1e-4) counts as a failed fit.
    Each iteration works on the trials still iterating only."""
    v = stats.n_visits
    dup, tril = duplication_matrix(v)
    sigma, ok = _start(stats)
    ll, fit, r, rx = reml_loglik(stats, sigma, ok)
    ok &= fit.ok
    active = np.flatnonzero(ok)
    sub = stats.take(active)
    it = 0
    for it in range(1, max_iter + 1):
        if not len(active):
            break
        if it > 1:
            ll_a, fit, r, rx = reml_loglik(sub, sigma[active])
            ok[active] &= fit.ok
            ll[active] = ll_a
        else:
            fit = GLS(fit.beta[active], fit.cov[active], fit.w[active], fit.logdet_p[active], fit.logdet_h[active], fit.ok[active])
            r, rx = r[active], rx[active]
        new_sigma, going, good = _newton_step(sub, sigma[active], ll[active], fit, r, rx, dup, tril)
        sigma[active] = new_sigma
        ok[active] &= good & fit.ok
        keep = going & good & fit.ok
        active, sub = active[keep], sub.take(np.flatnonzero(keep))
    ll, fit, _, _ = reml_loglik(stats, sigma, ok)
    ok &= fit.ok & np.isfinite(ll)
    return MMRMFit(fit.beta, fit.cov, sigma, ok, it, ll)


def predicted_final_posterior(stats: PatternStats, sigma: np.ndarray, ok: np.ndarray, final_counts: np.ndarray, visit: int,
                              prior_precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior SD (S, A) of each active arm's difference from control at `visit`, and the degrees of
    freedom (S,), that an analysis of the expected final data would have, given Sigma (an interim REML
    estimate): `final_counts` (S, V, K) the expected participants per pattern and arm. The regressors'
    moments per arm are those of randomised arms: x = (1, T_1..T_A, centred baseline) with, in arm k,
    E[x x'] = e e' + var(baseline) on the baseline's diagonal, e = (1, T_1..T_A, 0) the arm's indicators,
    the baseline variance from the data so far (H = sum_p W_p (x) E[Sxx_p] is linear in them)."""
    s, v = stats.n.shape
    Q = stats.n_regressors
    k = final_counts.shape[2]
    n_inc = stats.n.sum(axis=1)
    var0 = stats.sxx[:, :, Q - 1, Q - 1].sum(axis=1) / np.maximum(n_inc - 1, 1)
    e = np.zeros((k, Q))
    e[:, 0] = 1.0
    e[np.arange(1, k), np.arange(1, k)] = 1.0
    moments = np.zeros((s, k, Q, Q))
    moments[:] = e[:, :, None] * e[:, None, :]
    moments[:, :, Q - 1, Q - 1] = var0[:, None]
    expected = PatternStats(final_counts.sum(axis=2), np.einsum("spa,saij->spij", final_counts, moments), np.zeros((s, v, v, Q)),
                            np.zeros((s, v, v, v)), np.zeros((s, v, k)))
    pred = gls(expected, sigma, ok, prior_precision=prior_precision)
    j = visit * Q + 1 + np.arange(Q - 2)
    var = pred.cov[:, j, j]
    good = pred.ok[:, None] & (var > 0)
    sd = np.where(good, np.sqrt(np.where(good, var, 1.0)), np.inf)
    return sd, np.maximum(final_counts[:, visit:].sum(axis=(1, 2)) - Q, 1)


def prior_precisions(prior_sd: tuple[float, float, float], n_active: int, n_visits: int) -> np.ndarray:
    """(V*Q,) prior precision of vec(B): per visit, the visit mean's, each active arm's effect's, the baseline slope's."""
    vm, eff, slope = (float(x) for x in prior_sd)
    return np.tile(1 / np.array([vm, *(eff,) * n_active, slope]) ** 2, n_visits)


def mmrm_effect(change: np.ndarray, attended: np.ndarray, arm: np.ndarray, baseline: np.ndarray, visit: int,
                prior_sd: tuple[float, float, float] | None = None, final_counts: np.ndarray | None = None,
                n_active: int | None = None, flat_control: bool = False) -> dict[str, np.ndarray]:
    """Per trial and active arm (arrays (S, A); `arm` as `pattern_stats`): the MMRM estimate of the arm's
    difference from control at post-baseline visit index `visit`, its SE, the residual degrees of freedom
    (participants attending that visit - Q) and whether the fit succeeded (a positive definite REML Sigma,
    at least 2 participants of the control arm and of that arm at that visit).

    With `prior_sd` = (visit mean, arm effect, baseline slope) prior SDs, also the posterior mean and SD of
    that difference given Sigma at its REML estimate, under independent Normal(0, sd) priors on every
    visit's coefficients (the Bayesian MMRM's, models/mmrm.py): `post_mean`, `post_sd`; with `final_counts`
    (an interim look's expected final pattern counts, planning.interim.expected_final_counts) also the
    final analysis' predicted posterior SD and degrees of freedom, `final_sd` and `final_df`
    (`predicted_final_posterior`). With `flat_control` (and `prior_sd`), also the same posterior with a flat prior on
    the control arm's mean change at `visit` (that one coefficient's prior precision 0, every other prior kept), as
    the estimate of (control mean c, each arm's difference d) that a prior on c combines with
    (maths.map_prior.control_prior_posterior): `control_mean` (S,), `control_var` (S,), `control_effect_cov` (S, A),
    `flat_effect_mean` (S, A), `flat_effect_var` (S, A); c is the control arm's mean change at the centre baseline (the
    mean baseline of the participants in the analysis)."""
    stats = pattern_stats(change, attended, arm, baseline, n_active)
    a_n = stats.n_regressors - 2
    fit = fit_reml(stats)
    est, se = (np.column_stack(x) for x in zip(*(fit.effect(visit, a) for a in range(a_n))))
    n_arm = stats.n_arm[:, visit]
    ok = fit.ok[:, None] & (np.minimum(n_arm[:, :1], n_arm[:, 1:]) >= 2) & np.isfinite(se) & (se > 0) & np.isfinite(est)
    df = np.broadcast_to(np.maximum(n_arm.sum(axis=1) - stats.n_regressors, 1)[:, None], ok.shape).copy()
    out = {"estimate": np.where(ok, est, 0.0), "se": np.where(ok, se, np.inf), "df": df, "ok": ok, "iterations": fit.iterations}
    if prior_sd is not None:
        v, Q = stats.n_visits, stats.n_regressors
        precision = prior_precisions(prior_sd, a_n, v)
        post = gls(stats, fit.sigma, fit.ok, prior_precision=precision, prior_mean=np.zeros(v * Q))
        j = visit * Q + 1 + np.arange(a_n)
        ok &= post.ok[:, None]
        out.update(ok=ok, post_mean=np.where(ok, post.beta[:, visit, 1:1 + a_n], 0.0), post_sd=np.where(ok, np.sqrt(post.cov[:, j, j]), np.inf))
        if flat_control:
            flat = precision.copy()
            jc = visit * Q  # the control arm's mean at `visit` (at the centre baseline)
            flat[jc] = 0.0
            free = gls(stats, fit.sigma, fit.ok, prior_precision=flat, prior_mean=np.zeros(v * Q))
            ok &= free.ok[:, None]
            good = ok.any(axis=1)  # the control arm's estimate stands when any arm's analysis does
            out.update(ok=ok,
                       control_mean=np.where(good, free.beta[:, visit, 0], 0.0),
                       control_var=np.where(good, free.cov[:, jc, jc], 1.0),
                       control_effect_cov=np.where(ok, free.cov[:, jc, j], 0.0),
                       flat_effect_mean=np.where(ok, free.beta[:, visit, 1:1 + a_n], 0.0),
                       flat_effect_var=np.where(ok, free.cov[:, j, j], 1.0))
        if final_counts is not None:
            final_sd, final_df = predicted_final_posterior(stats, fit.sigma, fit.ok & ok.any(axis=1), final_counts, visit, precision)
            out.update(final_sd=np.where(ok, final_sd, np.inf), final_df=np.broadcast_to(final_df[:, None], ok.shape).copy())
    return out
