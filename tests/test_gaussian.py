"""maths/gaussian.py, the one home of the trial's Gaussian algebra, against dense numpy and scipy; and no copy of it
elsewhere (no packed-Cholesky unpacking and no sd * corr * sd outside maths/)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from maths.gaussian import (
    chol_to_cov,
    conditional_normal,
    duplication_matrix,
    packed_chol_to_cov,
    sandwich,
    score_covariance,
    sd_corr_to_cov,
    sequential_moments,
    tril_unpack,
)

ROOT = Path(__file__).resolve().parents[1]


def _spd(rng, n, lead=()):
    a = rng.normal(size=lead + (n, n))
    return a @ np.swapaxes(a, -1, -2) + n * np.eye(n)


@pytest.mark.unit
def test_packed_factor_and_sd_corr_give_the_same_covariance():
    rng = np.random.default_rng(1)
    cov = _spd(rng, 4, (3,))
    chol = np.linalg.cholesky(cov)
    rows, cols = np.tril_indices(4)
    packed = chol[:, rows, cols]  # PyMC's LKJCholeskyCov order: row by row
    assert np.allclose(tril_unpack(packed, 4), chol)
    assert np.allclose(packed_chol_to_cov(packed, 4), cov)
    assert np.allclose(chol_to_cov(chol), cov)
    sd = np.sqrt(np.einsum("dii->di", cov))
    corr = cov / (sd[:, :, None] * sd[:, None, :])
    assert np.allclose(sd_corr_to_cov(sd, corr), cov)
    with pytest.raises(ValueError, match="packed entries"):
        tril_unpack(packed[:, :-1], 4)


@pytest.mark.unit
def test_conditional_normal_equals_the_precision_partition():
    """Sigma_TT|G = (P_TT)^-1 and mean mu_T - P_TT^-1 P_TG (x_G - mu_G), P = Sigma^-1 (dense), with leading draw axes."""
    rng = np.random.default_rng(2)
    n = 5
    cov = _spd(rng, n, (2, 3))
    mu = rng.normal(size=(2, 3, n))
    given, target = np.array([0, 3]), np.array([1, 2, 4])
    x = rng.normal(size=(6, 2))  # 6 rows of observed values
    coef, cond_cov, mean = conditional_normal(mu, cov, given, target, x)
    prec = np.linalg.inv(cov)
    p_tt = prec[..., target[:, None], target[None, :]]
    p_tg = prec[..., target[:, None], given[None, :]]
    want_cov = np.linalg.inv(p_tt)
    assert np.allclose(cond_cov, want_cov)
    want_coef = -want_cov @ p_tg
    assert np.allclose(coef, want_coef)
    dev = x[None, None] - mu[..., None, given]
    want_mean = mu[..., None, target] + np.einsum("...tg,...rg->...rt", want_coef, dev)
    assert np.allclose(mean, want_mean)
    # no given coordinates: the marginal
    coef0, cov0, mean0 = conditional_normal(mu, cov, [], target, np.zeros((6, 0)))
    assert coef0.shape == (2, 3, 3, 0) and np.allclose(cov0, cov[..., target[:, None], target[None, :]])
    assert np.allclose(mean0, np.broadcast_to(mu[..., None, target], (2, 3, 6, 3)))


@pytest.mark.unit
def test_conditional_normal_graph_matches_numpy():
    import pytensor.tensor as pt

    from maths.gaussian import conditional_normal_graph

    rng = np.random.default_rng(3)
    cov = _spd(rng, 3)
    mu = rng.normal(size=3)
    x = rng.normal(size=(4, 2))
    mean, cond = conditional_normal_graph(pt.as_tensor(mu), pt.as_tensor(cov), [0, 2], [1], x, xp=pt)
    _, want_cov, want_mean = conditional_normal(mu, cov, [0, 2], [1], x)
    assert np.allclose(mean.eval(), want_mean) and np.allclose(cond.eval(), want_cov)


@pytest.mark.unit
def test_sequential_regressions_are_the_multivariate_normal():
    """The sum of the sequential normal densities equals scipy's multivariate normal density with (mu, Sigma)."""
    rng = np.random.default_rng(4)
    m = 3
    a, s, links = rng.normal(size=m), rng.uniform(0.5, 2.0, size=m), rng.normal(size=m * (m - 1) // 2)
    mu, cov = sequential_moments(a, s, links, m)
    mu_f, chol = sequential_moments(a, s, links, m, factor=True)
    assert np.allclose(mu_f, mu) and np.allclose(chol @ chol.T, cov) and np.allclose(np.triu(chol, 1), 0.0)
    z = rng.normal(size=(10, m))
    seq = stats.norm.logpdf(z[:, 0], a[0], s[0])
    seq = seq + stats.norm.logpdf(z[:, 1], a[1] + links[0] * z[:, 0], s[1])
    seq = seq + stats.norm.logpdf(z[:, 2], a[2] + links[1] * z[:, 0] + links[2] * z[:, 1], s[2])
    assert np.allclose(seq, stats.multivariate_normal.logpdf(z, mu, cov))
    # leading draw axes, and the graph version
    import pytensor.tensor as pt

    mu2, cov2 = sequential_moments(np.stack([a, a]), np.stack([s, s]), np.stack([links, links]), m)
    assert np.allclose(mu2[1], mu) and np.allclose(cov2[1], cov)
    g_mu, g_cov = sequential_moments(pt.as_tensor(a), pt.as_tensor(s), pt.as_tensor(links), m, xp=pt)
    assert np.allclose(g_mu.eval(), mu) and np.allclose(g_cov.eval(), cov)


@pytest.mark.unit
def test_score_covariance_is_the_covariance_of_the_dense_linear_map():
    """y = Z b + Z A z + e with b ~ N(0, S), z ~ N(., C), e ~ N(0, sigma^2 I) independent: Cov(y) = M blockdiag(S, C, sigma^2 I) M'."""
    rng = np.random.default_rng(5)
    weeks = 5
    z = np.column_stack([np.ones(weeks), np.linspace(0, 1, weeks)])
    s, c = _spd(rng, 2), _spd(rng, 3)
    a = rng.normal(size=(2, 3))
    sigma = 1.7
    big = np.zeros((2 + 3 + weeks, 2 + 3 + weeks))
    big[:2, :2], big[2:5, 2:5], big[5:, 5:] = s, c, sigma**2 * np.eye(weeks)
    m = np.hstack([z, z @ a, np.eye(weeks)])
    assert np.allclose(score_covariance(z, s, sigma, a, c), m @ big @ m.T)
    assert np.allclose(score_covariance(z, s, sigma), z @ s @ z.T + sigma**2 * np.eye(weeks))
    assert np.allclose(sandwich(a, c), a @ c @ a.T)
    # leading draw axes
    many = score_covariance(z, np.stack([s, 2 * s]), np.array([sigma, sigma]), np.stack([a, a]), np.stack([c, c]))
    assert np.allclose(many[0], m @ big @ m.T)


@pytest.mark.unit
def test_duplication_matrix():
    rng = np.random.default_rng(6)
    cov = _spd(rng, 4)
    dup, (rows, cols) = duplication_matrix(4)
    assert np.allclose(dup @ cov[rows, cols], cov.reshape(-1))


@pytest.mark.unit
def test_no_copy_of_the_algebra_outside_maths():
    """diagnostics/ and planning/ (and inference/) ask maths/ or the model: no packed-factor unpacking, no sd * corr * sd."""
    unpack = re.compile(r"tril_indices")
    scaling = re.compile(r"sd\w*\[[^\]]*\]\s*\*\s*\w*corr|corr\w*\s*\*\s*\w*sd\w*\[")
    offenders = []
    for pkg in ("diagnostics", "planning", "inference"):
        for path in sorted((ROOT / pkg).glob("*.py")):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if unpack.search(line) or scaling.search(line):
                    offenders.append(f"{pkg}/{path.name}:{i}: {line.strip()}")
    assert not offenders, offenders


# a fixed posterior point of a biomarker trajectory model (one chain, two identical draws) and its dense pieces
MARKER_MEAN, MARKER_SD, MARKER_LINKS = np.array([0.1, -0.2, 0.3]), np.array([1.0, 0.8, 1.2]), np.array([0.5, -0.3, 0.4])
PROGNOSTIC, MODERATION = np.array([1.5, -1.0, 0.5]), np.array([-2.0, 1.0, 0.7])
PARTICIPANT_SD, PARTICIPANT_RHO, RESIDUAL_SD = np.array([5.0, 4.0]), -0.3, 3.0


def _one(v, dims):
    return ("chain", "draw", *dims), np.broadcast_to(v, (1, 2) + np.shape(v)).copy()


def _marker_model_point(**extra):
    """The posterior point as an xarray Dataset (extra: more variables as (value, dims))."""
    import xarray as xr

    return xr.Dataset({
        "participant_sd": _one(PARTICIPANT_SD, ("participant_effect",)), "participant_corr": _one(PARTICIPANT_RHO, ()),
        "residual_sd": _one(RESIDUAL_SD, ()), "marker_mean": _one(MARKER_MEAN, ("marker",)), "marker_sd": _one(MARKER_SD, ("marker",)),
        "marker_regression": _one(MARKER_LINKS, ("marker_link",)), "marker_prognostic": _one(PROGNOSTIC, ("marker",)),
        "marker_moderation": _one(MODERATION, ("marker",)), **{k: _one(v, dims) for k, (v, dims) in extra.items()},
    })


def _dense_pieces(design):
    """(Z, Z S Z' + sigma^2 I, the markers' joint covariance z = R^-1 (a + diag(s) e) with R = I - B) at the point."""
    z = np.column_stack([np.ones(len(design.weeks)), design.week_t1])
    sd, rho = PARTICIPANT_SD, PARTICIPANT_RHO
    s = np.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])
    base = z @ s @ z.T + RESIDUAL_SD**2 * np.eye(len(design.weeks))
    r = np.eye(3)
    r[1, 0], r[2, 0], r[2, 1] = -MARKER_LINKS[0], -MARKER_LINKS[1], -MARKER_LINKS[2]
    cz = np.linalg.inv(r) @ np.diag(MARKER_SD**2) @ np.linalg.inv(r).T
    return z, base, cz


@pytest.mark.unit
def test_models_answer_their_implied_covariance(small_trial):
    """ModelSpec.score_covariance of the headline model at a fixed posterior point == the dense covariance of a
    participant's scores: Z S Z' + sigma^2 I for complete markers, plus Z A C A' Z' (C = the covariance of the missing
    markers given the observed ones, from the dense joint covariance by the precision partition) for each missing
    pattern; and the MMRM's == L L' from its packed factor."""
    import xarray as xr

    from models import build_design, get
    from tests.test_fused import mixed_marker_patterns

    design = mixed_marker_patterns(build_design(small_trial))
    md = design.baseline
    implied = get("headline").score_covariance(_marker_model_point(), design)
    z, base, cz = _dense_pieces(design)
    assert np.array_equal(implied.weeks, design.weeks) and implied.outcome == "score"
    assert np.allclose(implied.cov[0, 1], base)
    group = implied.group_of(design.n_participants)
    integrated = md.missing.any(axis=1) & ~md.censored.any(axis=1)
    assert np.array_equal(group > 0, integrated)  # observed and censored-beside-missing participants: the base covariance
    a = np.vstack([PROGNOSTIC, MODERATION])
    for i in np.flatnonzero(integrated):
        miss = np.flatnonzero(md.missing[i])
        c = np.linalg.inv(np.linalg.inv(cz)[np.ix_(miss, miss)])  # Var(z_M | z_K)
        want = base + z @ a[:, miss] @ c @ a[:, miss].T @ z.T
        assert np.allclose(implied.covariance(group[i])[0, 0], want), i
    # the MMRM: Sigma from the packed factor
    chol = np.linalg.cholesky(_spd(np.random.default_rng(7), len(design.weeks) - 1))
    rows, cols = np.tril_indices(len(design.weeks) - 1)
    mm = get("mmrm").score_covariance(xr.Dataset({"visit_chol": _one(chol[rows, cols], ("visit_chol_dim_0",))}), design)
    assert mm.outcome == "change" and np.array_equal(mm.weeks, design.weeks[1:]) and np.allclose(mm.cov[0, 0], chol @ chol.T)


@pytest.mark.unit
def test_moderation_implied_covariance_per_arm(tmp_path):
    """The moderation model on a three-arm trial: an integrated participant's loadings hold their own arm's biomarker x
    arm term (none in the control arm), so its covariance is Z (S + A_i C A_i') Z' + sigma^2 I with that A_i, and the
    participants of one missing pattern form one group per arm."""

    from models import get
    from tests.test_fused import mixed_marker_patterns, three_arm_trial

    design = mixed_marker_patterns(three_arm_trial(tmp_path / "t"))
    md = design.baseline
    nac_mod = np.array([[1.0, -0.5, 0.0], [-2.5, 0.8, 1.2]])
    implied = get("moderation").score_covariance(_marker_model_point(nac_marker_moderation=(nac_mod, ("active_arm", "marker"))), design)
    z, base, cz = _dense_pieces(design)
    group = implied.group_of(design.n_participants)
    integrated = md.missing.any(axis=1) & ~md.censored.any(axis=1)
    assert np.array_equal(group > 0, integrated)
    for g in np.unique(group[integrated]):
        assert len(set(design.arm_idx[group == g])) == 1  # a group is one pattern in one arm
    assert set(design.arm_idx[integrated]) == {0, 1, 2}
    for i in np.flatnonzero(integrated):
        arm = design.arm_idx[i]
        a = np.vstack([PROGNOSTIC, MODERATION + (nac_mod[arm - 1] if arm > 0 else 0.0)])
        miss = np.flatnonzero(md.missing[i])
        c = np.linalg.inv(np.linalg.inv(cz)[np.ix_(miss, miss)])
        want = base + z @ a[:, miss] @ c @ a[:, miss].T @ z.T
        assert np.allclose(implied.covariance(group[i])[0, 0], want), i
