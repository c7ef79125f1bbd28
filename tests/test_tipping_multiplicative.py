"""The multiplicative delta and its tipping point: the imputed change from baseline after dropout multiplied by a
factor f (1: MAR), beside the additive delta.

No sampling: hand-made posterior draws on small simulated trials (those of tests/test_sensitivity.py). The effect
under a factor is checked against an independent computation (per draw and participant, the conditional mean of
each missing change with np.linalg.inv; for a trajectory model the participant's own mean from the draws of their
coefficients), the tipping factor against P(benefit) on either side of it, and tipping_point.csv with both kinds,
written and read back, also as a file saved without `delta_kind`.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats
from test_sensitivity import _trial, mmrm_posterior, treatment_posterior

from data.ice import load_ice
from diagnostics.csr_tables import saved_submission_tables, submission_tables
from diagnostics.sensitivity import (
    DECISION_THRESHOLD,
    FLIP_INTERVAL_PROB,
    estimand_population,
    imputed_changes,
    model_pieces,
    strategy_effect,
    summarise,
    tipping_plot,
    tipping_point,
)
from diagnostics.sensitivity_analyses import SensitivityOptions, model_sensitivity, saved_sensitivity
from inference.idata_io import save_idata
from models.mmrm import mmrm_data


@pytest.fixture(scope="module")
def dropout_trial(tmp_path_factory):
    """40 participants, heavy dropout and intermittent gaps (some without any post-baseline visit)."""
    return _trial(tmp_path_factory.mktemp("mult") / "t", n_participants=40, seed=4, dropout_by_last_week=0.5, intermittent_missing=0.12)


@pytest.fixture(scope="module")
def complete_trial(tmp_path_factory):
    """Nobody drops out (intermittent gaps only)."""
    return _trial(tmp_path_factory.mktemp("mult") / "c", n_participants=30, seed=8, dropout_by_last_week=1e-12, intermittent_missing=0.15)


def _flat(post, name):
    v = post[name].transpose("chain", "draw", ...)
    return v.values.reshape((-1,) + v.shape[2:])


def _effect(idata, design, strategy="MAR", ice=None, arm=None):
    pieces = model_pieces(idata, design)
    pop = estimand_population(design, pieces)
    return strategy_effect(pieces, pop, strategy, ice, arm, imputed_changes(idata, design, pieces, ice)), pieces


def long_way_mmrm(idata, ds, design, strategy, ice=None, arm=1):
    """Per draw the long way, for active arm `arm`: (Delta^s, C^s) over the post-baseline visits, Delta^s = d + the mean
    over the arm of (m^s - m^MAR) and C^s the mean over the arm of m^s (the imputed change), both over each
    participant's visits after dropout (or from their intercurrent event), with m^s the conditional mean of the
    missing changes given the changes before, from the participant's full mean (their arm's, or the control arm's
    after dropout under J2R) and np.linalg.inv of the observed block of Sigma."""
    ice = ice or {}
    post = idata.posterior
    score = ds["score"].values
    weeks = ds["week"].values.astype(int)
    y = score[:, 1:] - score[:, [0]]
    visits = weeks[1:]
    nv = len(visits)
    members = np.flatnonzero(ds["arm_index"].values == arm)
    base = score[:, 0] - mmrm_data(design).baseline_center  # the MMRM's parameterisation: slopes about this centre
    sites = sorted(set(ds["site"].values))
    site_idx = np.array([sites.index(x) for x in ds["site"].values])
    pids = [str(p) for p in ds["participant"].values]
    d = _flat(post, "nac_visit_effect")[:, arm - 1] if arm else np.zeros_like(_flat(post, "visit_mean"))  # arm 0: control
    packed = _flat(post, "visit_chol")
    nd = len(d)
    effect, change = np.zeros((nd, nv)), np.zeros((nd, nv))
    for s in range(nd):
        lower = np.zeros((nv, nv))
        lower[np.tril_indices(nv)] = packed[s]
        sigma = lower @ lower.T
        mu_r = (_flat(post, "visit_mean")[s][None, :] + _flat(post, "baseline_slope")[s][None, :] * base[:, None]
                + _flat(post, "site_effect")[s][site_idx][:, None])
        mu_a = mu_r + d[s][None, :]
        shift, total = np.zeros(nv), np.zeros(nv)
        for i in members:
            obs = ~np.isnan(y[i])
            if pids[i] in ice:
                week, strat = ice[pids[i]]
                first = list(visits).index(week)
            else:
                strat = strategy
                first = (np.flatnonzero(obs).max() + 1) if obs.any() else 0
            cond = obs & (np.arange(nv) < first)
            post_event = np.arange(nv) >= first
            imputed = post_event & ~obs if strat == "MAR" else post_event
            nu = mu_a[i].copy()
            if strat == "J2R":
                nu[first:] = mu_r[i, first:]

            def cmean(m):
                if not cond.any():
                    return m.copy()
                return m + sigma[:, cond] @ np.linalg.inv(sigma[np.ix_(cond, cond)]) @ (y[i, cond] - m[cond])

            m_s, m_mar = cmean(nu), cmean(mu_a[i])
            shift[imputed] += (m_s - m_mar)[imputed]
            total[imputed] += m_s[imputed]
        effect[s] = d[s] + shift / len(members)
        change[s] = total / len(members)
    return effect, change, visits


# ---------------------------------------------------------------- (1) factor 1 is MAR


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["mmrm", "treatment"])
def test_factor_one_reproduces_the_base_strategy_exactly(dropout_trial, kind):
    """f = 1 leaves every draw as it is (MAR, J2R; with and without intercurrent events); the tipping grid's row at
    factor 1 is the MAR summary, and its MAR draws are the model's own nac_effect."""
    ds, design = dropout_trial
    idata = mmrm_posterior(design) if kind == "mmrm" else _with_participant_means(treatment_posterior(design), design)
    idata.posterior.attrs["model"] = kind
    for strategy in ("MAR", "J2R"):
        eff, pieces = _effect(idata, design, strategy)
        assert np.array_equal(eff.factor_adjusted(1.0), eff.draws)
        assert np.array_equal(eff.factor_adjusted(1.0, arms="both"), eff.draws)
        assert not np.allclose(eff.factor_adjusted(0.5), eff.draws)  # and another factor moves them
    res = tipping_point(idata, design, week=12, kind="multiplicative", deltas=[1.0, 0.5, 0.0], plot=False)
    x = idata.posterior["nac_effect"].sel(active_arm=design.active_arms[0], week=12).values.ravel()
    at_one = res.table.iloc[0]
    for key, value in summarise(x).items():
        assert at_one[key] == value, key


@pytest.mark.unit
def test_factor_one_with_intercurrent_events_is_the_analysis_without_a_factor(dropout_trial, tmp_path):
    ds, design = dropout_trial
    pids, arm = [str(p) for p in ds["participant"].values], ds["arm_index"].values
    complete = np.flatnonzero((arm == 1) & ~np.isnan(ds["score"].values[:, -1]))
    (tmp_path / "ice.csv").write_text(f"participant_id,week,strategy\n{pids[complete[0]]},8,J2R\n{pids[complete[1]]},6,CIR\n")
    ice = load_ice(tmp_path / "ice.csv", ds)
    idata = mmrm_posterior(design)
    eff, _ = _effect(idata, design, "MAR", ice)
    assert not np.array_equal(eff.draws, _flat(idata.posterior, "nac_effect")[:, 0, 1:])  # the events moved the MAR analysis
    assert np.array_equal(eff.factor_adjusted(1.0), eff.draws)


# ---------------------------------------------------------------- (2) an independent computation


@pytest.mark.unit
@pytest.mark.parametrize("strategy", ["MAR", "J2R"])
def test_mmrm_effect_under_a_factor_equals_the_long_computation(dropout_trial, strategy, tmp_path):
    """Per draw: Delta^{s,f} = Delta^s + (f - 1) C^s with C^s the arm's imputed changes from the long computation, for
    f = 0.5, 0 (no change from baseline) and -0.5 (worsening); with an intercurrent-event table too; arms='both'
    subtracts the control arm's imputed changes."""
    ds, design = dropout_trial
    idata = mmrm_posterior(design)
    pids, arm = [str(p) for p in ds["participant"].values], ds["arm_index"].values
    complete = np.flatnonzero((arm == 1) & ~np.isnan(ds["score"].values[:, -1]))
    events = {pids[complete[0]]: (8, "J2R"), pids[complete[1]]: (6, "MAR")}
    (tmp_path / "ice.csv").write_text("participant_id,week,strategy\n" + "".join(f"{p},{w},{s}\n" for p, (w, s) in events.items()))
    for ice, listed in ((None, None), (load_ice(tmp_path / "ice.csv", ds), events)):
        eff, pieces = _effect(idata, design, strategy, ice)
        effect, change, visits = long_way_mmrm(idata, ds, design, strategy, listed)
        np.testing.assert_allclose(eff.draws, effect, rtol=0, atol=1e-10)
        np.testing.assert_allclose(eff.imputed_change, change, rtol=0, atol=1e-9)
        assert np.abs(change[:, list(visits).index(12)]).mean() > 1  # imputed changes of several points: a real check
        for f in (0.5, 0.0, -0.5):
            np.testing.assert_allclose(eff.factor_adjusted(f), effect + (f - 1) * change, rtol=0, atol=1e-9)
    # arms='both': the control arm's imputed changes (MAR, its own mean) scaled too
    eff, _ = _effect(idata, design, strategy)
    _, mine, _ = long_way_mmrm(idata, ds, design, strategy)
    _, theirs, _ = long_way_mmrm(idata, ds, design, "MAR", arm=0)
    np.testing.assert_allclose(eff.factor_adjusted(0.25, arms="both"), eff.draws - 0.75 * (mine - theirs), rtol=0, atol=1e-9)


def _with_participant_means(idata, design, seed=3):
    """The `treatment` draws with each participant's fixed-part coefficients c_i (level, change, follow-up change) and
    participant effects b_i, as a fit's posterior holds them."""
    rng = np.random.default_rng(seed)
    post = idata.posterior
    chains, draws, n = post.sizes["chain"], post.sizes["draw"], design.n_participants
    c = np.stack([rng.normal(28, 3, (chains, draws, n)), rng.normal(-10, 3, (chains, draws, n)), rng.normal(-0.5, 1, (chains, draws, n))], -1)
    b = rng.normal(0, 2, (chains, draws, n, 2))
    post = post.assign(participant_fixed=(("chain", "draw", "participant", "participant_term"), c),
                       participant_effects=(("chain", "draw", "participant", "participant_effect"), b))
    idata = idata.copy()
    idata.posterior = post.assign_coords(participant=list(design.participants), participant_term=["level", "change", "followup_change"])
    return idata


@pytest.mark.unit
def test_trajectory_effect_under_a_factor_equals_the_hand_computed_imputed_change(dropout_trial):
    """The `treatment` model: a participant's imputed score at week w is their own mean (c0 + b0) + (c1 + b1) t1_w
    + c2 t2_w at the draw, so their imputed change is that minus their baseline score; under factor f the effect is
    nac_effect + (f - 1) x (the arm's imputed changes after dropout summed, / the arm's size)."""
    ds, design = dropout_trial
    idata = _with_participant_means(treatment_posterior(design), design)
    eff, pieces = _effect(idata, design)
    score, weeks = ds["score"].values, ds["week"].values.astype(int)
    c, b = _flat(idata.posterior, "participant_fixed"), _flat(idata.posterior, "participant_effects")
    treated = np.flatnonzero(ds["arm_index"].values == 1)
    nac = _flat(idata.posterior, "nac_effect")[:, 0]
    for j, w in enumerate(weeks):
        t1, t2 = min(w, 12) / 12, max(w - 12, 0) / (weeks.max() - 12)
        total = 0.0
        for i in treated:
            seen = np.flatnonzero(~np.isnan(score[i]))
            if w > weeks[seen.max()]:  # after the participant's last observed visit
                total = total + (c[:, i, 0] + b[:, i, 0]) + (c[:, i, 1] + b[:, i, 1]) * t1 + c[:, i, 2] * t2 - score[i, 0]
        expected = total / len(treated)
        np.testing.assert_allclose(eff.imputed_change[:, j], expected, rtol=0, atol=1e-9)
        for f in (0.6, 0.0):
            np.testing.assert_allclose(eff.factor_adjusted(f)[:, j], nac[:, j] + (f - 1) * expected, rtol=0, atol=1e-9)
    assert np.abs(eff.imputed_change[:, list(weeks).index(12)]).mean() > 1


# ---------------------------------------------------------------- (3) the tipping factor


def _benefit_posterior(design, n=2000):
    """MMRM draws whose week-12 differences are the normal quantiles of N(-4, 1): a clear benefit."""
    idata = mmrm_posterior(design, draws=n // 2, nac12=-4 + stats.norm.ppf((np.arange(n) + 0.5) / n))
    post = idata.posterior
    base = design.wide_scores()[:, 0]
    control = post["visit_mean"] + post["baseline_slope"] * (np.nanmean(base) - mmrm_data(design).baseline_center)
    zero = control.isel(visit=[0]) * 0  # the control arm's mean change at the mean baseline, 0 at week 0 (the efficacy table)
    post["placebo_change"] = xr.concat([zero, control], "visit").rename(visit="week").assign_coords(week=design.weeks)
    post.attrs["model"] = "mmrm"
    return idata


def _flipped(y) -> bool:
    """The conclusion of benefit lost: P(benefit) below the threshold or the 95% HDI reaching 0."""
    return bool((y < 0).mean() < DECISION_THRESHOLD or summarise(y, FLIP_INTERVAL_PROB)["hdi_97.5%"] >= 0)


@pytest.mark.unit
def test_tipping_factor_lies_where_the_conclusion_flips(dropout_trial):
    """The exact tipping factor f*: computed from the draws here, benefit is concluded just above f* (P(benefit) at
    least the threshold and the 95% HDI below 0) and not just below it; the grid's tipping factor is the largest
    flipped grid factor, the next one up is not flipped; a grid that stops short says so; no benefit even at factor
    1 gives 1; nobody imputed after dropout: it never flips, said so."""
    ds, design = dropout_trial
    idata = _benefit_posterior(design)
    eff, _ = _effect(idata, design)
    j = list(eff.weeks).index(12)
    res = tipping_point(idata, design, week=12, kind="multiplicative", plot=False)
    assert res.kind == "multiplicative" and res.delta is not None and 0 < res.exact < 1
    f = res.exact
    above, below = eff.factor_adjusted(f + 1e-6)[:, j], eff.factor_adjusted(f - 1e-6)[:, j]
    assert not _flipped(above) and _flipped(below)
    p_above = (above < 0).mean()
    assert p_above >= DECISION_THRESHOLD and ((below < 0).mean() < DECISION_THRESHOLD or summarise(below, 0.95)["hdi_97.5%"] >= 0)
    grid = res.table.set_index("delta")
    assert grid.loc[res.delta, "flipped"] and res.delta <= f
    step = np.diff(np.sort(grid.index.to_numpy()))[0]
    up = grid.index[np.isclose(grid.index, res.delta + step)]
    assert len(up) == 1 and not grid.loc[up[0], "flipped"]
    assert grid.index.max() == 1.0 and grid.index.min() <= 0.0  # 1 (MAR) down to no change from baseline at least
    assert f"flips at factor = {res.delta:g} on the grid (exactly {f:.2f})" in res.message
    assert res.change == pytest.approx(eff.imputed_change[:, j].mean() / eff.share_treatment[j])
    # the additive tipping point of the same draws, found on the same search: one that moves every draw alike
    add = tipping_point(idata, design, week=12, plot=False)
    assert add.exact == pytest.approx((4 - 1.96) / add.share, abs=0.01 / add.share)
    # a grid that stops before the flip; no benefit to begin with; nobody imputed
    short = tipping_point(idata, design, week=12, kind="multiplicative", deltas=[1.0, 0.95, 0.9], plot=False)
    assert short.delta is None and short.exact == pytest.approx(f) and "does not flip within the grid (factor 1 down to 0.9)" in short.message
    none = tipping_point(mmrm_posterior(design, nac12=np.linspace(-1, 1, 50)), design, kind="multiplicative", plot=False, model="mmrm")
    assert none.exact == 1.0 and none.delta == 1.0 and "no benefit concluded even at factor 1" in none.message


@pytest.mark.unit
def test_without_dropouts_no_factor_tips(complete_trial):
    ds, design = complete_trial
    res = tipping_point(_benefit_posterior(design), design, week=12, kind="multiplicative", plot=False)
    assert res.share == 0 and res.exact is None and res.delta is None
    assert "never flips" in res.message and not res.table["flipped"].any()
    assert np.allclose(res.table["mean"], res.table["mean"].iloc[0])  # nobody imputed: the factor moves nothing


# ---------------------------------------------------------------- (4) the direction


@pytest.mark.unit
def test_a_smaller_factor_moves_the_effect_towards_no_benefit(dropout_trial):
    """The imputed participants improve (their imputed change is below 0 in every draw), so a smaller factor raises
    every draw: down the grid the mean rises and P(benefit) falls, monotonically; a factor above 1 (more improvement
    than MAR) lowers the mean; the additive delta goes the same way."""
    ds, design = dropout_trial
    idata = _benefit_posterior(design)
    eff, _ = _effect(idata, design)
    j = list(eff.weeks).index(12)
    assert (eff.imputed_change[:, j] < 0).all()
    res = tipping_point(idata, design, week=12, kind="multiplicative", plot=False)
    table = res.table.sort_values("delta", ascending=False)
    assert (np.diff(table["mean"]) > 0).all() and (np.diff(table["p_below_0"]) <= 0).all()
    assert table["p_below_0"].iloc[0] > table["p_below_0"].iloc[-1]
    assert eff.factor_adjusted(1.5)[:, j].mean() < eff.draws[:, j].mean() < eff.factor_adjusted(0.5)[:, j].mean()
    flipped = table["flipped"].to_numpy()
    assert not flipped[0] and flipped[-1] and (np.diff(flipped.astype(int)) >= 0).all()  # flips once, going down
    add = tipping_point(idata, design, week=12, plot=False).table
    assert (np.diff(add["mean"]) > 0).all() and (np.diff(add["p_below_0"]) <= 0).all()


# ---------------------------------------------------------------- (5) tipping_point.csv and what reads it


def _sensitivity(idata, design, options=None):
    """model_sensitivity without the responders and the prior sensitivity (not this module's subject)."""
    import diagnostics.sensitivity_analyses as analyses

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(analyses, "prior_sensitivity_table", lambda idata: pd.DataFrame())
        mp.setattr(analyses, "responder_table", lambda *args, **kwargs: pd.DataFrame())
        return model_sensitivity("mmrm", idata, design, options or SensitivityOptions())


def _png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])


@pytest.mark.unit
def test_the_csv_has_both_kinds_and_a_file_without_delta_kind_still_reads(dropout_trial, tmp_path):
    """tipping_point.csv: the additive rows (as before, every column kept) then the multiplicative ones, `delta_kind`
    saying which; messages, figure (a column of panels per kind) and the submission table state both; read back from
    a folder, the same; a file saved without `delta_kind` (additive rows only) reads back as the additive tipping
    point, with no multiplicative row in the submission table."""
    ds, design = dropout_trial
    idata = _benefit_posterior(design, n=400)
    idata.posterior.attrs["data_source"] = str(ds.attrs["source"])
    idata.add_groups(trial_data=ds)
    sens = _sensitivity(idata, design, SensitivityOptions(weeks=(12, 16)))
    tip = sens.tables["tipping_point"]
    assert tip.columns[0] == "delta_kind" and list(dict.fromkeys(tip["delta_kind"])) == ["additive", "multiplicative"]
    assert {"delta", "week", "mean", "sd", "p_below_0", "flipped", "strategy", "arms", "threshold", "imputed_share",
            "imputed_change", "tipping_delta", "tipping_exact", "tipping_message"} <= set(tip.columns)
    for kind in ("additive", "multiplicative"):
        for week in (12, 16):
            rows = tip[(tip["delta_kind"] == kind) & (tip["week"] == week)]
            expected = tipping_point(idata, design, week=week, kind=kind, plot=False)
            np.testing.assert_allclose(rows["mean"], expected.table["mean"], rtol=0, atol=1e-12)
            np.testing.assert_allclose(rows["delta"], expected.table["delta"])
            assert rows["tipping_message"].nunique() == 1 and rows["tipping_message"].iloc[0] == expected.message
            assert (rows["tipping_exact"] == expected.exact).all()
            assert rows["imputed_change"].isna().all() == (kind == "additive")
    assert len(sens.tipping_messages) == 2  # per week: the additive sentence; the multiplicative one
    for message, week in zip(sens.tipping_messages, (12, 16)):
        assert "flips at delta" in message and "flips at factor" in message and message.count(f"at week {week}") == 2
    assert _png_size(sens.tipping_figure)[0] > 1.8 * _png_size(tipping_plot(sens.tipping_points[0], design))[0]  # two columns

    tables = submission_tables("mmrm", idata, ds, mcid=2.0, sensitivity=sens, data_source="t")
    ard = tables.ard
    factors = ard[(ard["analysis"] == "mmrm: tipping point (MAR x factor)") & (ard["statistic"] == "tipping_factor")]
    mult = tip[tip["delta_kind"] == "multiplicative"].groupby("week")["tipping_exact"].first()
    assert dict(zip(factors["visit"].astype(int), factors["value"])) == pytest.approx(mult.to_dict())
    labels = [row[1] for row in tables.sensitivity().body]
    assert labels.count("Tipping point: delta (points)") == 2 and labels.count("Tipping point: factor on the change") == 2
    assert any("factor on the change" in note and "no natural zero" in note for note in tables.sensitivity().footnotes)

    folder = tmp_path / "out"
    save_idata(idata, folder / "mmrm" / "idata.nc")
    pd.DataFrame([{"quantity": "x", "p_below_-2": 0.5}]).to_csv(folder / "mmrm" / "estimates.csv", index=False)
    (folder / "run.json").write_text(json.dumps({"models": {"mmrm": {}}, "sensitivity": {"ice": None, "weeks": [12, 16]}}))
    for name in ("sensitivity", "tipping_point"):
        sens.tables[name].to_csv(folder / "mmrm" / f"{name}.csv", index=False)
    saved = saved_sensitivity(folder, {"mmrm": idata})["mmrm"]
    assert saved.tipping_messages == sens.tipping_messages and saved.weeks == (12, 16)
    again = saved_submission_tables(folder, {"mmrm": idata}, {"mmrm": saved})["mmrm"]
    pd.testing.assert_frame_equal(again.ard, ard)

    # a file saved without the column: its rows are the additive tipping point
    old = tip[tip["delta_kind"] == "additive"].drop(columns=["delta_kind", "imputed_change"])
    old.to_csv(folder / "mmrm" / "tipping_point.csv", index=False)
    saved = saved_sensitivity(folder, {"mmrm": idata})["mmrm"]
    assert saved.tipping_messages == tuple(old.groupby("week", sort=False)["tipping_message"].first())
    assert saved.weeks == (12, 16)
    back = saved_submission_tables(folder, {"mmrm": idata}, {"mmrm": saved})["mmrm"]
    assert not (back.ard["analysis"] == "mmrm: tipping point (MAR x factor)").any()
    additive = ard[ard["analysis"] == "mmrm: tipping point (MAR + delta)"].reset_index(drop=True)
    pd.testing.assert_frame_equal(back.ard[back.ard["analysis"] == "mmrm: tipping point (MAR + delta)"].reset_index(drop=True), additive)
    labels = [row[1] for row in back.sensitivity().body]
    assert labels.count("Tipping point: delta (points)") == 2 and "Tipping point: factor on the change" not in labels
