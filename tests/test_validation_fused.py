"""SBC and coverage on the fused path (validation/swap.FusedRefit) and on Dask (validation/parallel.py).

Default tier: a replicate's simulated data become the design the models read, its scores drawn from its markers; the refit compiled once fits a
replicate exactly as a fresh fused compile of that replicate's model does (same context array, same draws), and
its fused density is the PyTensor graph's on the replicate's data; the same ranks in this process and on a Dask
LocalCluster of 1 and 2 workers (and the same coverage table); a few replicates already tell a tenfold too narrow
prior from the right one; a bad scheduler address is refused with exit code 2. Slow tier: the fused fit of a
replicate follows the compiled graph's draw for draw, and a 20-replicate SBC flags an MMRM whose fitted prior is
ten times too narrow for the simulation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytensor
import pytest
from scipy import stats

from data import TrialParameters
from inference import compile as engine
from inference.sampling import nutpie_adaptation
from models import registry
from validation import run as validation_run
from validation.coverage import run_coverage
from validation.designs import MARKER_DRAWS, latent_markers, sbc_design, simulated_arrays, with_data
from validation.run import SBC_PARAMETERS
from validation.sbc import prior_draws, run_sbc
from validation.swap import FusedRefit

TINY = dict(draws=60, tune=80, chains=2)
WIDE_NAC = {"nac_visit_effect": {"params": {"sigma": 60.0}}}  # 10x the default (0.1 x the 60-point range)


@pytest.fixture(scope="module")
def design():
    return sbc_design(n_participants=40, seed=5)


def _replicate(name, design, seed=4, r=0):
    """(the simulation model, the design of its prior predictive draw r, that draw: observed values and marker draws,
    the prior draw of every free variable)."""
    sim = registry.get(name).build(latent_markers(design))
    prior = prior_draws(sim.model, 2, seed)
    draw = {**{v.name: prior.prior_predictive[v.name].values[0, r] for v in sim.model.observed_RVs},
            **{v: prior.prior[v].values[0, r] for v in MARKER_DRAWS if v in prior.prior}}
    free = {rv.name: prior.prior[rv.name].values[0, r] for rv in sim.model.free_RVs}
    return sim, with_data(design, **simulated_arrays(sim, draw, design)), draw, free


def _observed(model) -> dict[str, np.ndarray]:
    return {v.name: np.asarray(model.rvs_to_values[v].data) for v in model.observed_RVs}


def _point(model, values: dict) -> dict:
    """The model's value variables (transformed) at the untransformed `values` of its free variables."""
    out = {}
    for rv in model.free_RVs:
        value = values[rv.name]
        transform = model.rvs_to_transforms.get(rv)
        if transform is not None:
            value = transform.forward(pytensor.tensor.as_tensor(value), *rv.owner.inputs).eval()
        out[model.rvs_to_values[rv].name] = np.asarray(value, dtype=model.rvs_to_values[rv].dtype)
    return out


def _y_logp(model, values) -> float:
    return float(model.compile_logp(vars=[model["y"]])(_point(model, values)))


@pytest.mark.unit
@pytest.mark.parametrize("name", ["headline", "mmrm"])
def test_simulated_data_become_the_design_the_model_reads(design, name):
    sim, new, draw, free = _replicate(name, design)
    fit = registry.get(name).build(new).model
    rebuilt = _observed(fit)
    assert not np.allclose(new.y, design.y)
    # visits and participants are the template's; only values change
    assert np.array_equal(new.obs_participant, design.obs_participant) and np.array_equal(new.t1, design.t1)
    if name == "mmrm":  # the simulated change is what the rebuilt model observes ((baseline + change) - baseline: to rounding)
        np.testing.assert_allclose(rebuilt["change"], draw["change"], rtol=0, atol=1e-12)
        week0 = design.obs_week == 0  # the week-0 scores stay: the MMRM models change given the baseline
        assert np.array_equal(new.y[week0], design.y[week0]) and not np.allclose(new.y[~week0], design.y[~week0])
        return
    np.testing.assert_array_equal(rebuilt["y"], draw["y"])
    md = design.baseline
    assert np.array_equal(np.isnan(new.baseline.z), np.isnan(md.z))  # the template's missing-marker pattern
    for k, marker in enumerate(md.names):  # the model's marker likelihood scores the simulated values
        np.testing.assert_array_equal(rebuilt[f"marker_{marker}"], new.baseline.z[~md.missing[:, k], k])
    # the scores were drawn from these markers: at the draw's parameters (the fitted model's latent markers given the
    # simulation's innovations) the fitted model's density of the scores is the simulation model's with those scores,
    # and not that of the same scores with the template's markers (what the prior predictive of the template would pair)
    n, m = md.z.shape
    values = {**free, "marker_missing_std": free["marker_missing_std"].reshape(n, m)[md.missing]}
    sim_with_y = registry.get(name).build(latent_markers(with_data(design, y=draw["y"]))).model
    assert _y_logp(fit, values) == pytest.approx(_y_logp(sim_with_y, free), rel=1e-12)
    template_markers = registry.get(name).build(with_data(design, y=draw["y"])).model
    assert abs(_y_logp(template_markers, values) - _y_logp(fit, values)) > 1.0
    with pytest.raises(ValueError, match="latent_markers"):
        simulated_arrays(registry.get(name).build(design), draw, design)


@pytest.mark.smoke
@pytest.mark.parametrize("name", ["headline", "mmrm"])
def test_refit_is_a_fresh_fused_fit_of_the_replicate_and_its_density_the_graphs(design, name):
    import nutpie

    refit = FusedRefit.build(name, design)
    _, new, _, _ = _replicate(name, design)
    plain = registry.get(name).build(new)
    fresh = plain.fast_variant() if plain.fast_variant is not None else plain
    layout = engine.fused_layout(fresh)
    # the context array built from the template's model is the replicate model's own
    swapped = refit.layout(new)
    assert np.array_equal(swapped.ctx, layout.ctx) and swapped.shape_info[0] == layout.shape_info[0]
    # the fused density and gradient on the replicate's context are the PyTensor graph's of the replicate's model,
    # and not those of the template's data
    logp_c = refit.compiled.compiled_logp_func
    assert engine.fused_disagreement(fresh, layout, logp_c) is None
    assert engine.fused_disagreement(fresh, refit.layout(design), logp_c) is not None
    a = refit.fit(new, seed=3, cores=1, **TINY)
    compiled, _ = engine.compile_nutpie(fresh)
    assert engine.uses_fused(compiled)
    b = nutpie.sample(compiled, seed=3, cores=1, progress_bar=False, save_warmup=False, target_accept=0.9, **TINY, **nutpie_adaptation())
    for var in SBC_PARAMETERS[name]:  # the ranked population parameters are in the fused fit's posterior
        np.testing.assert_array_equal(a.posterior[var].values, b.posterior[var].values, err_msg=var)


def _comparable(ranks: pd.DataFrame) -> pd.DataFrame:
    return ranks.drop(columns=["fit_s", "fit_cpu_s"])


@pytest.mark.smoke
def test_same_ranks_and_coverage_in_process_and_on_one_and_two_dask_workers(design):
    from dask.distributed import Client, LocalCluster

    def sbc(name, client=None):
        return run_sbc(name, name, design, SBC_PARAMETERS[name], n_reps=2, seed=8, cores=1, chunk_size=1, client=client, **TINY).ranks

    def coverage(client=None):
        table, _ = run_coverage(2, seed=5, draws=60, tune=80, chains=2, cores=1, params=TrialParameters(n_participants=60), fast=True,
                                chunk_size=1, client=client)
        return table.drop(columns=["fit_s"])

    here, here_cov = sbc("mmrm"), coverage()
    assert here["replicate"].tolist() == sorted(here["replicate"]) and here["replicate"].nunique() == 2
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
            pd.testing.assert_frame_equal(_comparable(sbc("mmrm", client)), _comparable(here), check_exact=True)
            if workers == 2:
                pd.testing.assert_frame_equal(coverage(client), here_cov, check_exact=True)
    # another seed, other ranks
    other = run_sbc("mmrm", "mmrm", design, SBC_PARAMETERS["mmrm"], n_reps=2, seed=9, cores=1, **TINY).ranks
    assert not np.array_equal(other["rank"].to_numpy(), here["rank"].to_numpy())


@pytest.mark.smoke
def test_a_few_replicates_tell_a_tenfold_too_narrow_prior_from_the_right_one(design):
    """The small version of the slow check below: 4 replicates, truths of the arm x visit effect drawn from a prior
    10x wider than the fitted one land outside every posterior draw far more often than the 2% of a calibrated fit."""
    params = ["nac_visit_effect"]
    right = run_sbc("mmrm", "mmrm", design, params, n_reps=4, seed=2, cores=1, draws=100, tune=150)
    wrong = run_sbc("mmrm (wide simulation)", "mmrm", design, params, n_reps=4, seed=2, cores=1, draws=100, tune=150, sim_priors=WIDE_NAC)
    assert right.ranks["divergences"].max() == 0
    n_rank = right.n_rank_draws

    def p_extreme(res):  # all 24 ranks (6 visits x 4 replicates) pooled: truths outside every draw, 2% each if calibrated
        k = int(res.ranks["rank"].isin([0, n_rank]).sum())
        return k / len(res.ranks), stats.binom.sf(k - 1, len(res.ranks), 2 / (n_rank + 1))

    share, p = p_extreme(right)
    assert share <= 0.25 and p > 1e-3, right.ranks
    share, p = p_extreme(wrong)
    assert share >= 0.6 and p < 1e-12, wrong.ranks
    assert wrong.uniformity["flagged"].sum() >= 4, wrong.uniformity


@pytest.mark.smoke
def test_validation_run_refuses_a_bad_scheduler_and_bad_options(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--sbc", "mmrm", "--sbc-reps", "2", "--out", str(out)]
    assert validation_run.main([*base, "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'" in err and "Traceback" not in err
    assert validation_run.main([*base, "--scheduler", "no address here"]) == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err
    assert validation_run.main([*base, "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert validation_run.main([*base, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert validation_run.main(["--sbc", "nonexistent", "--out", str(out)]) == 2
    assert "no SBC set-up" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


# ---------------------------------------------------------------- slow tier


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mmrm"])
def test_fused_fit_of_a_replicate_follows_the_compiled_graph_draw_for_draw(design, name):
    """(The MMRM only: each graph compile costs minutes; the headline refit's density and gradient are checked against
    the graph in the default tier.) The replicate's fast model through nutpie's compiled PyTensor graph (a cold compile: minutes) and through the
    refit's fused function, same seed: the same initial points and gradients to ~1e-13 (the sums kernel adds in
    another order than the graph), so the same draws until rounding differences grow: over these 45 iterations they
    reach about 1e-6 of the draws' scale (the bound is 1e-4 of it), where a density that differs from the model's
    would move the draws by a posterior SD. Both with the diagonal mass matrix: the low-rank adaptation's eigenvectors
    turn those rounding differences into other trajectories within a few dozen iterations, which would hide what this
    compares (the densities); the default tier checks the refit's default adaptation against nutpie's own call."""
    import nutpie

    refit = FusedRefit.build(name, design)
    _, new, _, _ = _replicate(name, design)
    plain = registry.get(name).build(new)
    fresh = plain.fast_variant() if plain.fast_variant is not None else plain
    graph, _ = engine.compile_nutpie(fresh, fused=False)
    assert not engine.uses_fused(graph)
    settings = dict(draws=20, tune=25, chains=2, cores=1, seed=6, progress_bar=False, save_warmup=False, target_accept=0.9)
    a = refit.fit(new, **{k: v for k, v in settings.items() if k not in ("progress_bar", "save_warmup")}, mass_matrix="diag")
    b = nutpie.sample(graph, **settings, **nutpie_adaptation("diag"))
    for var in SBC_PARAMETERS[name]:
        x, y = a.posterior[var].values, b.posterior[var].values
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-4 * (1 + np.abs(y).max()), err_msg=var)


@pytest.mark.slow
def test_sbc_on_the_fused_path_flags_an_mmrm_whose_prior_is_ten_times_too_narrow(design):
    """20 replicates with the arm x visit effects simulated from a prior 10x wider than the fitted one: every
    element flagged, most truths beyond all posterior draws; the right model's same 20 replicates flag none of them."""
    params = ["nac_visit_effect", "visit_sd"]
    wrong = run_sbc("mmrm (wide simulation)", "mmrm", design, params, n_reps=20, seed=3, draws=200, tune=200, cores=1, sim_priors=WIDE_NAC)
    right = run_sbc("mmrm", "mmrm", design, params, n_reps=20, seed=3, draws=200, tune=200, cores=1)
    w, r = wrong.uniformity.set_index("parameter"), right.uniformity.set_index("parameter")
    print(w.to_string(), r.to_string(), sep="\n")
    effects = [p for p in w.index if p.startswith("nac_visit_effect")]
    assert len(effects) == 6
    for p in effects:
        assert w.loc[p, "flagged"] and w.loc[p, "p_extreme"] < 1e-6 and w.loc[p, "extreme_rank_share"] >= 0.4, w
        assert w.loc[p, "sd_z"] > 3.0, w
    # Bonferroni over the parameters at 1%: the right model's ranks look uniform
    assert (r["p_value"] > 0.01 / len(r)).all() and (r["p_extreme"] > 0.01 / len(r)).all(), r
    assert (r["mean_z"].abs() < 1.0).all(), r
    assert list(w.index) == list(r.index)
