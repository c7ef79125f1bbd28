"""The fused log densities (inference/kernels.py, inference/kernels_mmrm.py) against PyTensor's own log density,
gradient and deterministics; the guard that compares them before sampling."""

from __future__ import annotations

import ctypes

import numpy as np
import pytensor
import pytest
from pytensor.compile.mode import Mode

from data import load_dataset
from inference import compile as engine
from inference.compile import compile_nutpie
from inference.kernels import Unsupported
from inference.sampling import SamplerSettings, sample_posterior
from models import build_design, get
from models.trajectory import build_trajectory_marginal
from tests.conftest import write_trial
from tests.test_covariates import with_covariates

ONE_MARKER = dict(
    marker_units=(("il6", "pg/mL"),), marker_median=(2.0,), marker_log_sd=(0.7,), marker_corr=((1.0,),), prognostic=(1.0,),
    moderation=(-1.5,), nac_moderation=(0.0,), mediation=(0.0,), nac_marker_log_ratio=(0.0,), detection_limits=(("il6", 1.2),),
)
OTHER_PRIORS = {
    "participant_sd": {"dist": "Exponential", "params": {"lam": 0.2}},
    "residual_sd": {"dist": "Gamma", "params": {"alpha": 3.0, "beta": 0.8}},
    "marker_sd": {"dist": "HalfCauchy", "params": {"beta": 1.5}},
    "participant_corr": {"params": {"eta": 1.0}},
    "intercept": {"params": {"mu": 25.0, "sigma": 9.0}},
    "site": {"params": {"sigma": 2.5}},
}


@pytest.fixture(scope="module")
def small_design(small_trial):
    return build_design(small_trial)


# a three-arm trial: control, 'low' and 'high' (20 participants each), with biomarkers (missing and censored values)
THREE_ARMS = dict(treatment_arm="low", nac_effect_e=-1.5, nac_effect_f=-2.0, more_arms=(("high", -3.0, -3.5),))


def three_arm_trial(folder):
    """The design of a small three-arm trial written to `folder` (the three_arm_design fixtures)."""
    write_trial(folder, n_participants=60, seed=8, **THREE_ARMS)
    design = build_design(load_dataset(folder))
    assert design.active_arms == ["low", "high"] and np.bincount(design.arm_idx).tolist() == [20, 20, 20]
    assert design.baseline.n_missing > 0 and design.baseline.n_censored > 0
    return design


@pytest.fixture(scope="module")
def three_arm_design(tmp_path_factory):
    return three_arm_trial(tmp_path_factory.mktemp("trials") / "three_arms")


@pytest.fixture(scope="module")
def covariate_design(small_trial_dir, tmp_path_factory):
    """The small trial with baseline covariates: age (continuous), sex (2 levels) and education (3 levels)."""
    design = build_design(load_dataset(with_covariates(small_trial_dir, tmp_path_factory.mktemp("trials") / "covariates")))
    assert design.covariates.shape == (design.n_participants, 4)
    return design


# per-phase means and SDs of the phase blocks (the enthusiastic preset gives nac_change one mean per phase), and
# covariate priors other than the defaults
PHASE_PRIORS = {
    "nac_change": {"params": {"mu": [-2.0, 0.5], "sigma": [1.2, 2.5]}},
    "time_change": {"params": {"mu": [-11.0, 1.0]}},
    "covariate_level": {"params": {"mu": 1.0, "sigma": 4.0}},
    "covariate_change": {"params": {"mu": -0.5, "sigma": 2.0}},
}


@pytest.fixture(scope="module")
def lean_design(tmp_path_factory):
    """No follow-up phase, one site, one marker (with censoring): the shapes the default trial lacks."""
    folder = tmp_path_factory.mktemp("trials") / "lean"
    write_trial(folder, n_participants=40, seed=3, weeks=(0, 2, 4, 8, 12), sites=("only",), site_weights=(1.0,), **ONE_MARKER)
    design = build_design(load_dataset(folder))
    assert not design.has_followup and len(design.sites) == 1 and len(design.baseline.names) == 1
    assert design.baseline.n_censored > 0 and design.baseline.n_missing > 0
    return design


UNREWRITTEN = Mode(linker="py", optimizer=None)  # the graph as PyMC writes it, evaluated in Python: quick to build


def _reference(model):
    """PyTensor's log density and gradient, and the stored variables, as functions of the value variables."""
    values = [model.rvs_to_values[rv] for rv in model.free_RVs]
    logp = model.logp()
    grads = pytensor.grad(logp, values)
    density = pytensor.function(values, [logp, *grads], mode=UNREWRITTEN)
    joined = {v.name for v in values}
    stored = [v for v in model.unobserved_value_vars if v.name not in joined]
    stored_fn = pytensor.function(values, stored, mode=UNREWRITTEN, on_unused_input="ignore")
    return values, density, stored, stored_fn


def _split(x, layout, n):
    names, slices, shapes = layout.shape_info
    return [x[s].reshape(sh) for s, sh in zip(slices[:n], shapes[:n])]


def fused_callbacks(layout):
    """The C callbacks (log density and gradient; expand) that nutpie calls for `layout`, its kernel's and variant's,
    from the run's compile cache as a fit loads them: each kernel is compiled once per test run, not again in each
    worker that calls it from Python."""
    variant = getattr(layout, "variant", "")
    return engine.fused_functions(layout.kernel, engine.cache_dir(), *((variant,) if variant else ()))


def _ptr(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


def fused_logp_grad(layout, x, grad):
    """The fused log density at unconstrained x, its gradient into grad (the callback must report success, code 0)."""
    x, lp = np.ascontiguousarray(x, dtype=np.float64), np.full(1, np.nan)
    assert grad.dtype == np.float64 and grad.flags.c_contiguous and x.size == grad.size == layout.n_dim
    code = fused_callbacks(layout)[0].ctypes(layout.n_dim, _ptr(x), _ptr(grad), _ptr(lp), layout.ctx.ctypes.data_as(ctypes.c_void_p))
    assert code == 0, f"the fused log density returned code {code}"
    return float(lp[0])


def fused_expand(layout, x, out):
    """Every stored variable of the draw x into out (the expand callback must report success, code 0)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    assert out.dtype == np.float64 and out.flags.c_contiguous and out.size == layout.n_expanded
    code = fused_callbacks(layout)[1].ctypes(layout.n_dim, layout.n_expanded, _ptr(x), _ptr(out), layout.ctx.ctypes.data_as(ctypes.c_void_p))
    assert code == 0, f"the fused expand returned code {code}"


def _headline(design, priors=None):
    return build_trajectory_marginal(design, priors, name="headline", arm=True, markers=True)


def _check_against_pytensor(design, priors=None, points=4, seed=0, shift=None, build=_headline):
    built = build(design, priors)
    model = built.model
    layout = engine.fused_layout(built)
    assert layout is not None
    values, density, stored, stored_fn = _reference(model)
    rng = np.random.default_rng(seed)
    lps, refs = [], []
    for _ in range(points):
        x = rng.normal(size=layout.n_dim) * 0.7
        if shift is not None:
            x = shift(x, layout)
        out = density(*_split(x, layout, len(values)))
        ref_grad = np.concatenate([np.ravel(g) for g in out[1:]])
        grad = np.full(layout.n_dim, np.nan)
        lp = fused_logp_grad(layout, x, grad)
        assert np.all(np.isfinite(grad)) and np.isfinite(lp)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-8, atol=1e-9 * np.abs(ref_grad).max())
        lps.append(lp)
        refs.append(float(out[0]))
        # every stored variable: x itself, constrained values and deterministics
        full = np.full(layout.n_expanded, np.nan)
        fused_expand(layout, x, full)
        np.testing.assert_array_equal(full[: layout.n_dim], x)
        names, slices, shapes = layout.shape_info
        for var, value in zip(stored, stored_fn(*_split(x, layout, len(values)))):
            got = full[slices[names.index(var.name)]].reshape(np.shape(value))
            np.testing.assert_allclose(got, value, rtol=1e-10, atol=1e-10, err_msg=var.name)
    lps, refs = np.array(lps), np.array(refs)
    # differences between points exact; the level differs only by PyMC computing log(sigma) of
    # float32-representable constant prior scales in float32 (a constant, invisible to the sampler)
    np.testing.assert_allclose(np.diff(lps), np.diff(refs), rtol=1e-10, atol=1e-8)
    assert np.abs(lps - refs).max() < 1e-5
    return model, layout


def mixed_marker_patterns(design):
    """The design with every kind of marker pattern: one or two markers missing, a censored value beside a missing
    one (that participant's missing value stays latent), all missing, and complete."""
    import dataclasses

    b = design.baseline
    missing, censored, z, upper = b.missing.copy(), b.censored.copy(), b.z.copy(), b.z_upper.copy()
    complete = np.flatnonzero(~missing.any(axis=1) & ~censored.any(axis=1))
    cens = np.flatnonzero(censored.any(axis=1))
    for rows, cols in ((complete[:3], [1]), (complete[3:6], [0, 2]), (complete[6:8], [2]), (cens[:1], [1])):
        for k in cols:
            missing[rows, k] = True
            z[rows, k] = np.nan
    marker = dataclasses.replace(b, missing=missing, censored=censored, z=z, z_upper=upper)
    return dataclasses.replace(design, baseline=marker)


@pytest.mark.slow
def test_fused_density_with_every_marker_pattern(small_design):
    """Integrated missing markers (models/marker_block.py): one or two of three missing, all missing, and a
    missing value beside a censored one (kept latent), for the headline model; the next test does the moderation model
    with covariates. In the default tier every fused fit is checked against its graph before first use (the guard of
    inference/compile.py), the headline fits with missing markers included."""
    from models.marker_block import integrated_rows, latent_missing

    design = mixed_marker_patterns(small_design)
    b = design.baseline
    assert integrated_rows(b).sum() > 0 and len(latent_missing(b)) == 1
    model, layout = _check_against_pytensor(design, points=2, seed=5)
    assert "marker_missing_std" in [rv.name for rv in model.free_RVs]


@pytest.mark.slow
def test_fused_density_with_every_marker_pattern_moderation_and_covariates(small_design, covariate_design, three_arm_design):
    """As above for the moderation model with baseline covariates and other priors (the arm enters the loadings), and
    on the three-arm trial (each active arm its own loadings; integrated participants grouped by arm)."""
    _check_against_pytensor(mixed_marker_patterns(covariate_design), OTHER_PRIORS, points=2, seed=6, build=_moderation)
    _check_against_pytensor(mixed_marker_patterns(three_arm_design), OTHER_PRIORS, points=2, seed=26, build=_moderation)


@pytest.mark.unit
@pytest.mark.parametrize("arms", ["two", "three"])
def test_integrated_markers_density_equals_joint_normal(small_design, three_arm_design, arms):
    """The marginal model's likelihood terms at a random point == sum over participants of the dense joint normal
    log density of (their scores, their observed markers), the participant effects and missing markers integrated
    out: y_i = X_i c0_i + Z_i (A_i z_i + b_i) + e, z_i ~ N(mu, Sigma), b_i ~ N(0, S) (an independent computation).
    The moderation model: A_i has the biomarker x arm term of the participant's own arm (none in the control arm)."""
    import dataclasses

    from scipy.stats import multivariate_normal

    from maths.gaussian import sequential_moments

    design = mixed_marker_patterns(small_design if arms == "two" else three_arm_design)
    b = design.baseline
    # censored values made observed (just below their limit): every term is then a function of the parameters alone
    z = np.where(b.censored, b.z_upper - 0.5, b.z)
    b = dataclasses.replace(b, z=z, censored=np.zeros_like(b.censored), z_upper=np.full_like(b.z_upper, np.nan))
    design = dataclasses.replace(design, baseline=b)
    model = build_trajectory_marginal(design, None, name="moderation", arm=True, markers=True, nac_moderation=True).model
    assert "marker_missing_std" not in [rv.name for rv in model.free_RVs]
    rng = np.random.default_rng(11)
    point = {k: v + 0.3 * rng.normal(size=np.shape(v)) for k, v in model.initial_point().items()}
    names = ["marker_mean", "marker_sd", "marker_regression", "intercept", "time_change", "nac_change", "marker_prognostic",
             "marker_moderation", "nac_marker_moderation", "site_effect", "participant_chol", "residual_sd"]
    values = dict(zip(names, model.compile_fn(model.replace_rvs_by_values([model[n] for n in names]), inputs=model.value_vars, point_fn=False, mode=UNREWRITTEN, on_unused_input="ignore")(**point)))
    got = model.compile_fn(model.logp(vars=model.observed_RVs + model.potentials), inputs=model.value_vars, point_fn=False, mode=UNREWRITTEN, on_unused_input="ignore")(**point)
    mu, cov = sequential_moments(values["marker_mean"], values["marker_sd"], values["marker_regression"], 3)
    packed = values["participant_chol"]
    lchol = np.array([[packed[0], 0.0], [packed[1], packed[2]]])
    s_b, sigma = lchol @ lchol.T, float(values["residual_sd"])
    nac, nac_mod = values["nac_change"], values["nac_marker_moderation"]  # active arm x phase, active arm x marker
    assert nac.shape == (design.n_active, 2) and nac_mod.shape == (design.n_active, 3)
    site = values["site_effect"][design.site_idx]
    want = 0.0
    for i in range(design.n_participants):
        rows = design.obs_participant == i
        x = np.column_stack([np.ones(rows.sum()), design.t1[rows], design.t2[rows]])
        arm = design.arm_idx[i]  # 0 control, a the a-th active arm: row a - 1 of the arm terms
        own_nac, own_mod = (nac[arm - 1], nac_mod[arm - 1]) if arm > 0 else (np.zeros(2), np.zeros(3))
        c0 = np.array([values["intercept"] + site[i], values["time_change"][0] + own_nac[0], values["time_change"][1] + own_nac[1]])
        a = np.vstack([values["marker_prognostic"], values["marker_moderation"] + own_mod])  # loadings on (level, change), 2 x m
        obs = np.flatnonzero(~b.missing[i])
        zmat = x[:, :2]
        cov_yy = zmat @ (a @ cov @ a.T + s_b) @ zmat.T + sigma**2 * np.eye(rows.sum())
        cov_yz = zmat @ a @ cov[:, obs]
        joint_mean = np.concatenate([x @ c0 + zmat @ a @ mu, mu[obs]])
        joint_cov = np.block([[cov_yy, cov_yz], [cov_yz.T, cov[np.ix_(obs, obs)]]])
        want += multivariate_normal(joint_mean, joint_cov).logpdf(np.concatenate([design.y[rows], b.z[i, obs]]))
    np.testing.assert_allclose(float(got), want, rtol=1e-11)


@pytest.mark.unit
def test_fused_density_equals_pytensor(small_design):
    _check_against_pytensor(small_design, points=3)


@pytest.mark.unit
def test_fused_density_three_arms(three_arm_design):
    """Two active arms, each with its own terms, indexed by the participant's arm: value, gradient and stored variables
    (nac_effect active_arm x week ...). The moderation model (markers; its integrated participants, in every arm, are
    grouped by arm) with other priors; treatment_curved under the enthusiastic preset (one mean per phase, the same for
    every arm) with other curvature priors. Every marker pattern: the slow tier."""
    from models.prior_file import preset_priors

    design = three_arm_design
    _, layout = _check_against_pytensor(design, OTHER_PRIORS, points=2, seed=21, build=_moderation)
    names, _, shapes = layout.shape_info
    assert shapes[names.index("nac_change")] == (2, 2) and shapes[names.index("nac_effect")] == (2, len(design.weeks))
    assert shapes[names.index("nac_marker_moderation")] == shapes[names.index("nac_moderation_per_doubling")] == (2, 3)
    priors = {**preset_priors("enthusiastic", "treatment_curved", design, 2.0), "nac_curvature": {"params": {"mu": 1.0, "sigma": 1.5}}}
    _, layout = _check_against_pytensor(design, priors, points=2, seed=22, build=_treatment_curved)
    assert layout.shape_info[2][layout.shape_info[0].index("nac_curvature")] == (2,)


@pytest.mark.unit
def test_fused_arm_blocks_move_their_own_arm_only(three_arm_design):
    """Moving one active arm's treatment-phase change moves that arm's nac_effect by t1_w and the fixed change of that
    arm's participants only: the other arm, the control arm and placebo_change stay (pins the layout x[o + a P + p]
    independently of the comparison with PyTensor)."""
    design = three_arm_design
    built = _moderation(design, None)
    layout = engine.fused_layout(built)
    names, slices, shapes = layout.shape_info
    x = np.random.default_rng(25).normal(size=layout.n_dim) * 0.5
    base, moved = np.zeros(layout.n_expanded), np.zeros(layout.n_expanded)
    fused_expand(layout, x, base)
    y = x.copy()
    y[slices[names.index("nac_change")].start + 1 * 2 + 0] += 2.0  # arm 'high' (the second), treatment phase
    fused_expand(layout, y, moved)
    block = lambda out, name: out[slices[names.index(name)]].reshape(shapes[names.index(name)])  # noqa: E731
    np.testing.assert_allclose(block(moved, "nac_effect")[1] - block(base, "nac_effect")[1], 2.0 * design.week_t1, atol=1e-12)
    np.testing.assert_array_equal(block(moved, "nac_effect")[0], block(base, "nac_effect")[0])
    np.testing.assert_array_equal(block(moved, "placebo_change"), block(base, "placebo_change"))
    shift = block(moved, "participant_fixed") - block(base, "participant_fixed")
    high = design.arm_idx == 2
    np.testing.assert_allclose(shift[high, 1], 2.0, atol=1e-12)
    assert not shift[~high].any() and not shift[:, [0, 2]].any()


@pytest.mark.unit
def test_fused_density_other_priors_and_lean_design(covariate_design, lean_design):
    """Other prior families, per-phase location priors and baseline covariates; the lean design's shapes (with the
    default priors too: test_fused_density_more_combinations, slow)."""
    _, layout = _check_against_pytensor(covariate_design, {**OTHER_PRIORS, **PHASE_PRIORS}, points=2, seed=1)
    assert "covariate_level" in layout.shape_info[0]
    _check_against_pytensor(lean_design, OTHER_PRIORS, points=2, seed=3)


def _null(design, priors):
    return build_trajectory_marginal(design, priors, name="null", arm=False)


def _treatment(design, priors):
    return build_trajectory_marginal(design, priors, name="treatment", arm=True)


@pytest.mark.unit
def test_fused_density_null_and_treatment_models(covariate_design, lean_design):
    """The models without biomarkers (no marker block; the null model has no arm either): the null model on the lean
    design with other priors, the treatment model with baseline covariates under the enthusiastic preset (one mean per
    phase). (Each model on the other design too: test_fused_density_more_combinations, slow.)"""
    _check_against_pytensor(lean_design, OTHER_PRIORS, points=2, seed=6, build=_null)
    _check_against_pytensor(covariate_design, _enthusiastic(covariate_design), points=2, seed=5, build=_treatment)


def _enthusiastic(design):
    from models.prior_file import preset_priors

    enthusiastic = preset_priors("enthusiastic", "treatment", design, 2.0)
    assert enthusiastic["nac_change"]["params"]["mu"] == [-2.0, 0.0]
    return enthusiastic


def _moderation(design, priors):
    return build_trajectory_marginal(design, priors, name="moderation", arm=True, markers=True, nac_moderation=True)


def _treatment_curved(design, priors):
    return build_trajectory_marginal(design, priors, name="treatment_curved", arm=True, curved=True)


def _null_curved(design, priors):  # not registered; the curvature without the arm (no nac_curvature)
    return build_trajectory_marginal(design, priors, name="null_curved", arm=False, curved=True)


@pytest.mark.unit
def test_fused_density_moderation_model(covariate_design, lean_design):
    """The biomarker x arm term inside each participant's treatment-phase change (and its per-doubling summary);
    with baseline covariates beside it (the small trial's markers: missing, censored and integrated ones); the lean
    design. (Under the default priors: test_fused_density_more_combinations, slow.)"""
    _check_against_pytensor(covariate_design, {**OTHER_PRIORS, "nac_marker_moderation": {"params": {"mu": -1.0, "sigma": 2.0}}},
                            points=2, seed=11, build=_moderation)
    _check_against_pytensor(lean_design, OTHER_PRIORS, points=2, seed=13, build=_moderation)


@pytest.mark.unit
def test_fused_density_curved_models(small_design, covariate_design, lean_design):
    """The 4th fixed coefficient on q = 4 t1 (1 - t1), its sufficient statistics, and the bend in nac_effect/placebo_change;
    with baseline covariates and per-phase priors; the lean design; the curvature without the arm. (Under the default
    priors: test_fused_density_more_combinations, slow.)"""
    _, layout = _check_against_pytensor(covariate_design, {**OTHER_PRIORS, **CURVATURE_PRIORS, **PHASE_PRIORS}, points=2, seed=15,
                                        build=_treatment_curved)
    assert layout.shape_info[2][layout.shape_info[0].index("participant_fixed")] == (covariate_design.n_participants, 4)
    _check_against_pytensor(lean_design, OTHER_PRIORS, points=2, seed=17, build=_treatment_curved)
    _check_against_pytensor(small_design, points=2, seed=18, build=_null_curved)


CURVATURE_PRIORS = {"time_curvature": {"params": {"mu": -2.0, "sigma": 4.0}}, "nac_curvature": {"params": {"mu": 1.0, "sigma": 1.5}}}


@pytest.mark.slow
def test_fused_density_more_combinations(small_design, covariate_design, lean_design):
    """The default tier's checks above under the default priors and on the other design: the headline, moderation and
    treatment_curved models under their default priors (on the small trial and the lean design), the null model with
    baseline covariates, the treatment model on the lean design with other priors."""
    _check_against_pytensor(lean_design, points=2, seed=2)
    _check_against_pytensor(small_design, points=2, seed=10, build=_moderation)
    _, layout = _check_against_pytensor(small_design, points=2, seed=14, build=_treatment_curved)
    assert layout.shape_info[2][layout.shape_info[0].index("participant_fixed")] == (small_design.n_participants, 4)
    _check_against_pytensor(lean_design, points=2, seed=16, build=_treatment_curved)
    _check_against_pytensor(covariate_design, points=2, seed=5, build=_null)
    _check_against_pytensor(lean_design, OTHER_PRIORS, points=2, seed=6, build=_treatment)


@pytest.mark.unit
def test_fused_curvature_changes_what_it_should(small_design):
    """treatment_curved: adding 2 to kappa_1 adds 2 q_w to nac_effect and leaves placebo_change alone; the log density
    moves too (the test above compares with PyTensor; this one pins the meaning of the blocks independently)."""
    built = _treatment_curved(small_design, None)
    layout = engine.fused_layout(built)
    names, slices, _ = layout.shape_info
    x = np.random.default_rng(19).normal(size=layout.n_dim) * 0.5
    base, moved = np.zeros(layout.n_expanded), np.zeros(layout.n_expanded)
    fused_expand(layout, x, base)
    y = x.copy()
    y[slices[names.index("nac_curvature")]] += 2.0
    fused_expand(layout, y, moved)
    q = 4 * small_design.week_t1 * (1 - small_design.week_t1)
    nac, placebo = slices[names.index("nac_effect")], slices[names.index("placebo_change")]
    np.testing.assert_allclose(moved[nac] - base[nac], 2.0 * q, atol=1e-12)  # the one active arm's nac_effect
    np.testing.assert_array_equal(moved[placebo], base[placebo])
    assert fused_logp_grad(layout, x, np.zeros(layout.n_dim)) != fused_logp_grad(layout, y, np.zeros(layout.n_dim))


@pytest.mark.unit
def test_fast_variants_match_their_plain_models(small_design):
    for name in ("null", "treatment", "treatment_curved", "moderation"):
        built = get(name).build(small_design)
        assert callable(built.fast_variant)
        marginal = built.fast_variant()
        plain, fast = built.model, marginal.model
        assert marginal.marginal and marginal.fused_kernel == "trajectory" and marginal.priors == built.priors
        # drawn after sampling: the participant effects and the missing markers integrated out (all of them here)
        recovered = {"participant_raw", "participant_effects", "y", "marker_missing_std"}
        for var, dims in plain.named_vars_to_dims.items():
            if var not in recovered:
                assert fast.named_vars_to_dims.get(var) == dims, (name, var)
        # the same free variables in the same order, less those
        assert [v.name for v in fast.free_RVs] == [v.name for v in plain.free_RVs if v.name not in recovered], name
        assert engine.fused_layout(marginal) is not None, name
    assert get("treatment").build(small_design, likelihood="student").fast_variant is None
    assert get("treatment_curved").build(small_design, likelihood="censored").fast_variant is None


@pytest.mark.unit
def test_per_phase_location_priors_stay_fused(covariate_design):
    """A vector mean of the phase blocks (the enthusiastic preset's) is computed by the fused function, phase by phase;
    a vector of the wrong length, or on a block that takes one number, makes the model use the graph."""
    from inference import kernels

    layout = engine.fused_layout(_treatment(covariate_design, PHASE_PRIORS))
    assert layout is not None
    loc = kernels._field(layout.ctx, kernels.F_PHASE_LOC)
    np.testing.assert_array_equal(loc, [-11.0, 15.0, 1.0, 15.0, -2.0, 1.2, 0.5, 2.5])
    np.testing.assert_array_equal(kernels._field(layout.ctx, kernels.F_COV), covariate_design.covariates.ravel())
    from models.priors import Prior

    with pytest.raises(kernels.Unsupported, match="one value per element"):
        kernels.location_elements(Prior("Normal", {"mu": [0.0, 1.0, 2.0], "sigma": 1.0}, ""), 2)
    assert engine.fused_layout(_treatment(covariate_design, {"intercept": {"params": {"mu": [30.0]}}})) is None


@pytest.mark.unit
def test_fused_density_far_below_detection_limit(small_design):
    """Marker means far above the limit put censored entries in log Phi's asymptotic branch (c < -20)."""

    def shift(x, layout):
        names, slices, _ = layout.shape_info
        x[slices[names.index("marker_mean")]] = 12.0
        x[slices[names.index("marker_sd_log__")]] = np.log(0.3)
        return x

    _check_against_pytensor(small_design, points=2, seed=4, shift=shift)


@pytest.mark.unit
def test_unsupported_priors_use_the_graph(small_design):
    odd = {"residual_sd": {"dist": "HalfStudentT", "params": {"nu": 3.0, "sigma": 5.0}}}
    built = _headline(small_design, odd)
    from nutpie.compile_pymc import _compute_shapes

    from inference.kernels import fused_layout

    with pytest.raises(Unsupported, match="HalfStudentT"):
        fused_layout(built.model, small_design, built.priors, _compute_shapes(built.model))
    assert engine.fused_layout(built) is None  # compile_nutpie then compiles the graph
    assert engine.fused_layout(_headline(small_design)) is not None
    assert engine.fused_layout(get("headline").build(small_design)) is None  # the plain model: the graph


@pytest.mark.slow
def test_fused_sampling_reproducible_and_cached(small_design, tmp_path, monkeypatch):
    """Same seed, same draws; the fused functions are cached on disk and loaded by a new compile (the default tier's
    version: tests/test_fast_path.py::test_seed_reproducible_and_cache_reused)."""
    monkeypatch.setenv("DEPTRIAL_CACHE", str(tmp_path / "cache"))
    settings = SamplerSettings(draws=200, tune=200, chains=2, seed=11)
    first, timings = sample_posterior(_headline(small_design), settings, quiet=True)
    again, _ = sample_posterior(_headline(small_design), settings, quiet=True)
    for name in ("nac_effect", "participant_fixed", "residual_sd", "site_effect"):
        np.testing.assert_array_equal(first.posterior[name].values, again.posterior[name].values)
    assert int(first.sample_stats["diverging"].sum()) == 0
    _, cached = compile_nutpie(_headline(small_design))
    assert cached


# ---------------------------------------------------------------- the MMRM's fused density

MMRM_PRIORS = {
    "visit_sd": {"dist": "Exponential", "params": {"lam": 0.15}},
    "visit_corr": {"params": {"eta": 2.0}},
    "visit_mean": {"params": {"mu": -4.0, "sigma": 9.0}},
    "site": {"params": {"sigma": 3.0}},
}


def _mmrm(design, priors=None):
    return get("mmrm").build(design, priors)


@pytest.mark.unit
def test_fused_mmrm_density_equals_pytensor(covariate_design, lean_design):
    """Drop-out and intermittent-gap patterns, several sites and one, default and other priors, with baseline
    covariates (continuous and categorical) and without."""
    from models.mmrm import mmrm_data

    patterns = mmrm_data(covariate_design).patterns
    assert any(not prefix for *_, prefix in patterns) and sum(prefix for *_, prefix in patterns) >= 2
    covariate_prior = {"covariate_effect": {"params": {"mu": 0.5, "sigma": 3.0}}}
    _, layout = _check_against_pytensor(covariate_design, {**MMRM_PRIORS, **covariate_prior}, points=3, seed=8, build=_mmrm)
    assert "covariate_effect" in layout.shape_info[0]
    _, layout = _check_against_pytensor(lean_design, points=2, seed=9, build=_mmrm)
    assert layout.kernel == "mmrm" and "site_effect_zerosum__" not in layout.shape_info[0]


@pytest.mark.unit
def test_fused_mmrm_with_a_map_prior_equals_pytensor(covariate_design):
    """A NormalMixture (MAP) prior on the control arm's change at the end of treatment (models.priors.CONTROL_CHANGE):
    value and gradient as PyTensor's, including far in a component's tail (the log-sum-exp)."""
    from models.mmrm import control_visit
    from models.priors import CONTROL_CHANGE, mixture_prior

    control = mixture_prior([0.5, 0.3, 0.2], [-9.0, -12.0, -9.0], [1.5, 2.5, 12.0], "MAP prior")
    _, layout = _check_against_pytensor(covariate_design, {**MMRM_PRIORS, CONTROL_CHANGE: control}, points=3, seed=12,
                                        build=_mmrm)
    assert CONTROL_CHANGE in _mmrm(covariate_design, {CONTROL_CHANGE: control}).priors and layout.kernel == "mmrm"
    from inference import kernels_mmrm

    ctx_map = kernels_mmrm._field(layout.ctx, kernels_mmrm.F_CONTROL)[:8]
    assert ctx_map[0] == control_visit(covariate_design) and ctx_map[1] == 3
    # a different mixture changes the density: the field is read
    other = mixture_prior([1.0], [0.0], [30.0], "vague")
    _check_against_pytensor(covariate_design, {CONTROL_CHANGE: other}, points=2, seed=13, build=_mmrm)


@pytest.fixture(scope="module")
def many_sites_design(tmp_path_factory):
    """Three arms, eight sites, baseline covariates (continuous and categorical), four post-baseline visits, drop-out and
    frequent intermittent gaps (patterns missing one, two and three visits before their last one)."""
    folder = tmp_path_factory.mktemp("trials") / "many_sites"
    sites = tuple(f"site{j}" for j in range(8))
    write_trial(folder, n_participants=90, seed=22, weeks=(0, 2, 4, 8, 12), sites=sites, site_weights=(1 / 8,) * 8,
                intermittent_missing=0.15, dropout_by_last_week=0.3, **THREE_ARMS)
    design = build_design(load_dataset(with_covariates(folder, folder.parent / "many_sites_covariates")))
    assert design.active_arms == ["low", "high"] and len(design.sites) == 8 and design.covariates.shape[1] == 4
    return design


@pytest.mark.unit
def test_fused_mmrm_sums_and_rows_equal_pytensor(many_sites_design, monkeypatch):
    """The likelihood from each pattern's sums of cross-products (K_SUMS), participant by participant (K_ROWS), and the
    default mix of the two, against PyTensor at the same points: three arms, eight sites, covariates, drop-out and
    intermittent patterns (the precision of a pattern with gaps from that of the leading block of Sigma, one to three
    visits missed)."""
    from models.mmrm import mmrm_data

    patterns = mmrm_data(many_sites_design).patterns
    missed = [int(vis[-1]) + 1 - len(vis) for vis, *_ in patterns]
    assert max(missed) == 3 and sum(m == 2 for m in missed) >= 2 and sum(m == 1 for m in missed) >= 2 and sum(m == 0 for m in missed) >= 2
    built = _mmrm(many_sites_design, {**MMRM_PRIORS, "covariate_effect": {"params": {"mu": 0.5, "sigma": 3.0}}})
    assert {"covariate_effect", "site_effect_zerosum__"} <= set(engine.fused_layout(built).shape_info[0])
    mmrm_sums_and_rows_agree(built, monkeypatch, seed=31)


def mmrm_sums_and_rows_agree(built, monkeypatch, seed: int) -> dict:
    """Check the MMRM's fused density of `built` with every pattern from its sums (K_SUMS), from its rows (K_ROWS) and
    the default mix (which must hold both), value and gradient against PyTensor at two random points; returns the
    pattern table (inference/kernels_mmrm.F_PATTERNS) of each: 'mixed', 'sums', 'rows'."""
    from inference import kernels_mmrm

    layouts, tables = {}, {}
    for kind, forced in (("mixed", None), ("sums", True), ("rows", False)):
        if forced is not None:
            monkeypatch.setattr(kernels_mmrm, "uses_sums", lambda *args, forced=forced: forced)
        layouts[kind] = engine.fused_layout(built)
        assert layouts[kind].kernel == kernels_mmrm.KERNEL
        tables[kind] = kernels_mmrm._field(layouts[kind].ctx, kernels_mmrm.F_PATTERNS).reshape(-1, kernels_mmrm.PATTERN_WIDTH)
        expected = {"mixed": {kernels_mmrm.K_ROWS, kernels_mmrm.K_SUMS}, "sums": {kernels_mmrm.K_SUMS}, "rows": {kernels_mmrm.K_ROWS}}
        assert set(tables[kind][:, 0].tolist()) == expected[kind]
    values, density, _, _ = _reference(built.model)
    rng = np.random.default_rng(seed)
    lps = {kind: [] for kind in layouts}
    refs = []
    for _ in range(2):
        x = rng.normal(size=layouts["mixed"].n_dim) * 0.7
        out = density(*_split(x, layouts["mixed"], len(values)))
        ref_grad = np.concatenate([np.ravel(g) for g in out[1:]])
        refs.append(float(out[0]))
        for kind, layout in layouts.items():
            grad = np.full(layout.n_dim, np.nan)
            lps[kind].append(fused_logp_grad(layout, x, grad))
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-8, atol=1e-9 * np.abs(ref_grad).max(), err_msg=kind)
    for kind in layouts:  # as _check_against_pytensor: differences exact, the level within PyMC's float32 constants
        np.testing.assert_allclose(np.diff(lps[kind]), np.diff(refs), rtol=1e-10, atol=1e-8, err_msg=kind)
        assert np.abs(np.array(lps[kind]) - refs).max() < 1e-5
    return tables


@pytest.mark.unit
def test_fused_trajectory_with_a_map_prior_equals_pytensor(small_design):
    """The MAP prior on time_change[0] (the control arm's change by the end of treatment) in the trajectory kernel."""
    from models.priors import CONTROL_CHANGE, mixture_prior

    control = mixture_prior([0.6, 0.4], [-10.0, -14.0], [2.0, 15.0], "MAP prior")
    _, layout = _check_against_pytensor(small_design, {CONTROL_CHANGE: control}, points=3, seed=14)
    assert layout.kernel == "trajectory"


@pytest.mark.unit
def test_mmrm_lkj_constant_matches_pymc():
    import pytensor.tensor as pt  # noqa: F401 - PyMC's helper builds a PyTensor expression
    from pymc.distributions.multivariate import _lkj_normalizing_constant

    from inference.kernels_mmrm import lkj_normalizing_constant

    for eta in (1.0, 0.5, 2.0, 3.7):
        for n in (2, 3, 4, 6, 9):
            assert lkj_normalizing_constant(eta, n) == pytest.approx(float(_lkj_normalizing_constant(eta, n).eval()), rel=1e-6, abs=1e-5)  # PyMC takes some logs of constants in float32


# ---------------------------------------------------------------- the guard against drift


@pytest.mark.unit
def test_guard_detects_a_fused_function_that_no_longer_matches_the_model(small_design):
    """A model whose mean or priors changed while its fused function did not is caught before sampling."""
    # the model's priors changed (the fused function still computes the old ones)
    layout = engine.fused_layout(_null(small_design, None))
    other = _null(small_design, {"site": {"params": {"sigma": 0.5}}})
    assert "log density" in engine.fused_disagreement(other, layout, engine.fused_functions(layout.kernel, engine.cache_dir())[0])
    # the model's mean changed: the fused function reads another arm assignment
    built = _mmrm(small_design)
    layout = engine.fused_layout(built)
    assert engine.fused_disagreement(built, layout, engine.fused_functions("mmrm", engine.cache_dir())[0]) is None
    import dataclasses

    swapped = dataclasses.replace(small_design, arm_idx=1 - small_design.arm_idx)
    drifted = engine.fused_layout(_mmrm(swapped))
    assert drifted.n_dim == layout.n_dim and not np.array_equal(drifted.ctx, layout.ctx)
    assert engine.fused_disagreement(built, drifted, engine.fused_functions("mmrm", engine.cache_dir())[0]) is not None


def _callbacks_of_this_run(monkeypatch):
    """compile_nutpie under another DEPTRIAL_CACHE (off, or an empty folder) still gets the callbacks compiled for this
    run: a compile into a new folder costs a cold compile, and what the tests below check is the guard around it (the
    cache itself: tests/test_fast_path.py::test_seed_reproducible_and_cache_reused)."""
    run_cache, compiled = engine.cache_dir(), engine.fused_functions
    monkeypatch.setattr(engine, "fused_functions", lambda kernel, cache_folder=None, *variant: compiled(kernel, run_cache, *variant))


@pytest.mark.unit
def test_guard_failure_falls_back_to_the_graph_with_a_warning(small_design, monkeypatch):
    import nutpie

    _callbacks_of_this_run(monkeypatch)
    monkeypatch.setenv("DEPTRIAL_CACHE", "off")
    monkeypatch.setattr(engine, "fused_disagreement", lambda *args: "gradient entry 3 differs")
    monkeypatch.setattr(nutpie, "compile_pymc_model", lambda model, backend: "the graph")
    with pytest.warns(RuntimeWarning, match="disagrees with its model.*gradient entry 3"):
        compiled, cached = compile_nutpie(_mmrm(small_design))
    assert compiled == "the graph" and not cached


@pytest.mark.unit
def test_guard_verdict_is_cached_per_model_and_code(small_design, tmp_path, monkeypatch):
    _callbacks_of_this_run(monkeypatch)
    monkeypatch.setenv("DEPTRIAL_CACHE", str(tmp_path))
    calls = []
    real = engine.fused_disagreement
    monkeypatch.setattr(engine, "fused_disagreement", lambda *a: calls.append(1) or real(*a))
    compile_nutpie(_null(small_design, None))
    compile_nutpie(_null(small_design, None))
    assert len(calls) == 1  # the second compile found the verdict
    compile_nutpie(_null(small_design, OTHER_PRIORS))
    assert len(calls) == 2  # other priors: checked again
