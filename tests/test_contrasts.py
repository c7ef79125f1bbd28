"""Contrasts between arms (diagnostics/contrasts.py): the parser's weights and refusals, every row of contrasts.csv
against a hand computation on synthetic draws, the dose-trend slope against np.polyfit per draw, P(best); the
estimates of a three-arm fit; --contrast refused before any fit. A three-arm fit end to end: tests/test_fit_cli.py."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest

import deptrial
import fit
from data import DEFAULT_DATASET, DOSE_DATASET
from data.meta import DatasetMeta
from deptrial import orchestrate
from diagnostics.contrasts import (
    CONTRASTS_FILE,
    ContrastError,
    arm_means,
    contrast_draws,
    contrasts_table,
    key_rows,
    p_best,
    parse_contrast,
    parse_contrasts,
    read_contrasts,
)
from diagnostics.estimates import estimates_table
from models.effects import ESTIMAND_COLUMNS

META = DatasetMeta(treatment_arms=("low", "high"), doses={"placebo": 0.0, "low": 50.0, "high": 100.0})
ARMS = ("placebo", "low", "high")
WEEKS = [0, 2, 4, 6, 8, 12, 16]


def weights(contrast) -> list[float]:
    return [contrast.weight_of(a) for a in ARMS]


def three_arm_fit(seed=0, chains=2, draws=250, active=("low", "high"), effects=(-1.0, -3.0)):
    """placebo_change (week) and nac_effect (active_arm, week) as the score models write them: 0 at week 0."""
    rng = np.random.default_rng(seed)
    pc = rng.normal(-10, 1.0, (chains, draws, len(WEEKS)))
    ne = np.stack([rng.normal(e, 1.0, (chains, draws, len(WEEKS))) for e in effects], axis=2)
    pc[..., 0], ne[..., 0] = 0.0, 0.0
    return az.from_dict(posterior={"placebo_change": pc, "nac_effect": ne}, coords={"week": WEEKS, "active_arm": list(active)},
                        dims={"placebo_change": ["week"], "nac_effect": ["active_arm", "week"]})


# ---------------------------------------------------------------- the parser


@pytest.mark.unit
def test_each_form_of_contrast_gives_its_weights():
    sizes = {"placebo": 90, "low": 60, "high": 120}
    assert weights(parse_contrast("high - low", ARMS)) == [0, -1, 1]
    assert weights(parse_contrast("  high   -low ", ARMS)) == [0, -1, 1] and parse_contrast("  high   -low ", ARMS).label == "high -low"
    assert weights(parse_contrast("0.5*low + 0.5*high - placebo", ARMS)) == [-1, 0.5, 0.5]
    assert weights(parse_contrast("1/3*low+2/3 * high-placebo", ARMS)) == pytest.approx([-1, 1 / 3, 2 / 3])
    assert weights(parse_contrast("low + high - 2*placebo", ARMS)) == [-2, 1, 1]  # both sides sum to 2: accepted as stated
    pooled = parse_contrast("pooled active - placebo", ARMS, sizes)
    assert weights(pooled) == pytest.approx([-1, 60 / 180, 120 / 180])
    assert pooled.weights_text() == ("placebo -1, low +0.3333, high +0.6667 (pooled active: the active arms weighted by their "
                                     "number of participants (low 60, high 120))")
    equal = parse_contrast("Mean Active - placebo", ARMS, sizes)
    assert weights(equal) == [-1, 0.5, 0.5] and "weighted equally" in equal.weights_text()
    assert weights(parse_contrast("high - mean active", ARMS)) == [0, -0.5, 0.5]  # the weights combine
    trend = parse_contrast("dose trend", ARMS, doses=META.doses)
    assert trend.kind == "dose_trend" and weights(trend) == pytest.approx([-0.01, 0.0, 0.01])
    # arm labels are taken whole, longest first, whatever characters they hold
    arms = ("placebo", "nac", "nac-high", "50 mg")
    assert [parse_contrast("nac-high - nac", arms).weight_of(a) for a in arms] == [0, -1, 1, 0]
    assert [parse_contrast("50 mg - placebo", arms).weight_of(a) for a in arms] == [-1, 0, 0, 1]


@pytest.mark.unit
@pytest.mark.parametrize("text, why", [
    ("bogus - placebo", "unknown arm 'bogus'"),
    ("High - low", "unknown arm 'High'"),  # labels are case-sensitive, as in dataset.toml
    ("low - 2*placebo", "the weights added sum to 1 and those subtracted to 2"),
    ("low - low", "its weights cancel"),
    ("low high", "expected + or - before 'high'"),
    ("low * 2 - placebo", "write a weight before its arm"),
    ("2 - placebo", "a weight without an arm"),
    ("low - placebo +", "nothing follows the last '+'"),
    ("", "it is empty"),
    ("1/0*low - placebo", "divides by zero"),
])
def test_a_bad_contrast_is_refused_with_the_arms_and_the_syntax(text, why):
    with pytest.raises(ContrastError, match=r"contrast '.*': .*") as exc:
        parse_contrast(text, ARMS, {"placebo": 3, "low": 3, "high": 3}, META.doses)
    message = str(exc.value)
    assert why in message and "The arms are placebo, low, high (placebo the control)" in message
    assert '"pooled active - placebo"' in message and '"dose trend"' in message


@pytest.mark.unit
def test_dose_trend_needs_declared_distinct_doses_and_contrasts_are_not_repeated():
    with pytest.raises(ContrastError, match=r"no \[arms.dose\] table in dataset.toml"):
        parse_contrasts(["dose trend"], DatasetMeta(treatment_arms=("low", "high")))
    with pytest.raises(ContrastError, match="every arm has the same dose"):
        parse_contrast("dose trend", ARMS, doses=dict.fromkeys(ARMS, 5.0))
    with pytest.raises(ContrastError, match="'pooled active' weights the active arms by their number of participants"):
        parse_contrast("pooled active - placebo", ARMS)
    with pytest.raises(ContrastError, match="given twice"):
        parse_contrasts(["high - low", "high  - low"], META)
    assert parse_contrasts(None, META) == []


# ---------------------------------------------------------------- the draws and the table


@pytest.mark.unit
def test_arm_means_are_the_control_change_plus_each_arms_effect():
    idata = three_arm_fit()
    means = arm_means(idata.posterior, META)
    pc, ne = idata.posterior["placebo_change"].values, idata.posterior["nac_effect"].values
    assert list(means["arm"].values) == list(ARMS) and list(means["week"].values) == WEEKS[1:]  # not the baseline
    np.testing.assert_array_equal(means.sel(arm="placebo").values, pc[..., 1:])
    np.testing.assert_array_equal(means.sel(arm="high").values, pc[..., 1:] + ne[:, :, 1, 1:])
    c = parse_contrast("0.5*low + 0.5*high - placebo", ARMS)
    np.testing.assert_allclose(contrast_draws(means, c).values, 0.5 * ne[:, :, 0, 1:] + 0.5 * ne[:, :, 1, 1:], atol=1e-12)
    assert arm_means(az.from_dict(posterior={"placebo_change": pc}, coords={"week": WEEKS}, dims={"placebo_change": ["week"]}).posterior,
                     META) is None  # no arm term (e.g. the null model): no contrasts


@pytest.mark.unit
def test_every_row_of_the_table_against_a_hand_computation():
    idata = three_arm_fit(seed=3)
    pc, ne = idata.posterior["placebo_change"].values, idata.posterior["nac_effect"].values
    user = parse_contrasts(["high - low", "pooled active - placebo"], META, {"placebo": 10, "low": 10, "high": 30})
    table = contrasts_table(idata, META, user, mcid=2.0, change_scores=True)
    assert list(table.columns) == ["kind", "contrast", "week", "unit", "mean", "sd", "hdi_3%", "hdi_97%", "p_below_0", "mcse_mean",
                                   "p_below_-2", "weights", *ESTIMAND_COLUMNS]
    assert list(dict.fromkeys(table["kind"])) == ["arm_mean", "vs_control", "contrast", "dose_trend", "p_best"]
    assert list(dict.fromkeys(table["contrast"])) == [*ARMS, "low - placebo", "high - placebo", "high - low", "pooled active - placebo",
                                                      "dose trend"]
    rows = table[table["kind"] != "p_best"].set_index(["contrast", "week"])

    def check(label, week, draws, mcid=True):
        row = rows.loc[(label, week)]
        flat = draws.ravel()
        lo, hi = az.hdi(flat, hdi_prob=0.94)
        assert row["mean"] == pytest.approx(flat.mean(), abs=1e-12) and row["sd"] == pytest.approx(flat.std(ddof=1), abs=1e-12)
        assert (row["hdi_3%"], row["hdi_97%"]) == pytest.approx((lo, hi), abs=1e-12)
        assert row["p_below_0"] == np.mean(flat < 0)
        assert row["p_below_-2"] == np.mean(flat < -2) if mcid else np.isnan(row["p_below_-2"])

    j = WEEKS.index(12)
    check("placebo", 12, pc[..., j], mcid=False)
    check("low", 8, pc[..., WEEKS.index(8)] + ne[:, :, 0, WEEKS.index(8)], mcid=False)
    check("high - placebo", 12, ne[:, :, 1, j])
    check("high - low", 16, (pc[..., -1] + ne[:, :, 1, -1]) - (pc[..., -1] + ne[:, :, 0, -1]))
    check("pooled active - placebo", 12, 0.25 * ne[:, :, 0, j] + 0.75 * ne[:, :, 1, j])
    # the vs-control rows are nac_effect itself, as in estimates.csv (bit for bit)
    est = estimates_table(idata, META, change_scores=True).set_index("quantity")
    for arm in ("low", "high"):
        for week in (12, 16):
            mine = rows.loc[(f"{arm} - placebo", week)]
            theirs = est.loc[f"{arm} - placebo mean MADRS at week {week}"]
            for col in ("mean", "sd", "hdi_3%", "hdi_97%", "p_below_0", "mcse_mean", "p_below_-2", *ESTIMAND_COLUMNS):
                assert mine[col] == theirs[col], (arm, week, col)
    # the weights and the estimand are stated
    assert rows.loc[("pooled active - placebo", 12), "weights"].startswith("placebo -1, low +0.25, high +0.75 (pooled active")
    assert rows.loc[("high - low", 12), "summary"] == "linear contrast of the arms' mean change from baseline, weights low -1, high +1"
    assert rows.loc[("high - low", 16), "variable"] == "MADRS change from baseline at week 16 (off-treatment follow-up)"
    assert rows.loc[("low - placebo", 12), "summary"] == "difference in mean change from baseline (low - placebo), adjusted for the baseline score"
    assert rows.loc[("low", 2), "summary"] == "mean change from baseline in the low arm (within one arm, not a randomised comparison)"
    assert table[list(ESTIMAND_COLUMNS)].notna().all().all()


@pytest.mark.unit
def test_dose_trend_is_the_least_squares_slope_of_the_arm_means_per_draw():
    idata = three_arm_fit(seed=4, draws=100)
    meta = DatasetMeta(treatment_arms=("low", "high"), doses={"placebo": 0.0, "low": 30.0, "high": 120.0})  # unequally spaced
    table = contrasts_table(idata, meta)
    means = arm_means(idata.posterior, meta).values.reshape(-1, 3, len(WEEKS) - 1)
    for k, week in enumerate(WEEKS[1:]):
        slopes = np.array([np.polyfit([0.0, 30.0, 120.0], m[:, k], 1)[0] for m in means])
        row = table[(table["kind"] == "dose_trend") & (table["week"] == week)].iloc[0]
        assert row["mean"] == pytest.approx(slopes.mean(), rel=1e-10) and row["sd"] == pytest.approx(slopes.std(ddof=1), rel=1e-9)
        assert row["p_below_0"] == np.mean(slopes < 0) and np.isnan(row["p_below_-2"])  # an MCID is in points, not per dose unit
        assert row["unit"] == "MADRS points per dose unit" and "placebo 0, low 30, high 120" in row["weights"]
    assert not (contrasts_table(idata, DatasetMeta(treatment_arms=("low", "high")))["kind"] == "dose_trend").any()  # no doses


@pytest.mark.unit
def test_p_best_sums_to_one_and_counts_the_draws_where_each_arm_is_lowest():
    idata = three_arm_fit(seed=5, effects=(-1.0, -1.5))
    means = arm_means(idata.posterior, META)
    best = p_best(means, 12)
    at = means.sel(week=12).values.reshape(-1, 3)
    assert sum(best.values()) == pytest.approx(1.0)
    assert best == {a: np.mean(np.argmin(at, axis=1) == i) for i, a in enumerate(ARMS)}
    assert best["high"] > best["low"] > best["placebo"] > 0
    table = contrasts_table(idata, META)
    rows = table[table["kind"] == "p_best"]
    assert list(rows["contrast"]) == list(ARMS) and (rows["week"] == 12).all() and (rows["unit"] == "probability").all()
    assert rows["mean"].tolist() == [best[a] for a in ARMS] and rows["mean"].sum() == pytest.approx(1.0)
    assert rows[["sd", "hdi_3%", "hdi_97%", "p_below_0"]].isna().all().all()
    key = key_rows(table)
    assert set(key["kind"]) == {"dose_trend", "p_best"} and (key["week"] == 12).all()


@pytest.mark.unit
def test_a_two_arm_fit_with_or_without_the_active_arm_dim_gives_the_same_table(tmp_path):
    one = three_arm_fit(seed=6, active=("nac",), effects=(-2.0,))
    legacy = one.copy()
    legacy.posterior["nac_effect"] = legacy.posterior["nac_effect"].sel(active_arm="nac", drop=True)
    meta = DatasetMeta()
    a, b = contrasts_table(one, meta), contrasts_table(legacy, meta)
    pd.testing.assert_frame_equal(a, b)
    assert list(dict.fromkeys(a["contrast"])) == ["placebo", "nac", "nac - placebo"]
    a.to_csv(tmp_path / CONTRASTS_FILE, index=False)
    back = read_contrasts(tmp_path / CONTRASTS_FILE)
    assert len(back) == len(a) and (back["weights"].iloc[:12] == "").all() and read_contrasts(tmp_path / "none.csv") is None


@pytest.mark.unit
def test_estimates_of_three_arms_name_each_arm_in_order():
    """Each active arm's rows in turn, then the control rows; each row's estimand names its arm."""
    idata = three_arm_fit(seed=7)
    est = estimates_table(idata, META)
    assert est["quantity"].tolist() == ["low - placebo mean MADRS at week 12", "low - placebo mean MADRS at week 16",
                                        "high - placebo mean MADRS at week 12", "high - placebo mean MADRS at week 16",
                                        "placebo change from baseline at week 12"]
    assert est["summary"].tolist()[:4] == ["difference in means (low - placebo)"] * 2 + ["difference in means (high - placebo)"] * 2
    assert est["mean"].iloc[2] == pytest.approx(idata.posterior["nac_effect"].sel(active_arm="high", week=12).values.mean())


@pytest.mark.unit
def test_console_and_report_lines():
    from deptrial.console import contrasts_text
    from diagnostics.summary import answer

    idata = three_arm_fit(seed=8)
    table = contrasts_table(idata, META, parse_contrasts(["high - low"], META))
    text = contrasts_text(table, 3).splitlines()
    assert text[0].startswith("high - low at week 12: ") and "P(< -2)" in text[0]
    assert text[1].startswith("dose trend at week 12: ") and "MADRS points per dose unit" in text[1]
    assert text[2].startswith("P(best arm at week 12, lowest mean change from baseline): placebo ")
    assert not any(line.startswith("P(best") for line in contrasts_text(table, 2).splitlines())
    a = answer("m", idata, estimates_table(idata, META), ARMS, 30.0, "MADRS", contrasts=table)
    assert list(dict.fromkeys(a.differences["arm"])) == ["low", "high"] and list(dict.fromkeys(a.trajectory["arm"])) == list(ARMS)
    assert a.sentences["effects"].startswith("low - placebo difference in mean MADRS (below 0 favours low) at week 12: ")
    assert " high - placebo difference in mean MADRS (below 0 favours high) at week 12: " in a.sentences["effects"]
    assert "P(best arm at week 12" in a.sentences["contrasts"]


# ---------------------------------------------------------------- refused before any fit


@pytest.mark.unit
def test_a_bad_contrast_exits_2_before_any_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(orchestrate, "run_models", lambda *a, **k: pytest.fail("a refused contrast must not reach the fits"))
    out = tmp_path / "out"
    assert fit.main(["--data", str(DOSE_DATASET), "--model", "mmrm", "--contrast", "high - low", "--contrast", "bogus - placebo",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "contrast 'bogus - placebo': unknown arm 'bogus'. The arms are placebo, low, high" in err and "Traceback" not in err
    assert fit.main(["--data", str(DEFAULT_DATASET), "--model", "treatment", "--contrast", "dose trend", "--out", str(out)]) == 2  # the two-arm trial declares no doses
    assert "no [arms.dose] table in dataset.toml" in capsys.readouterr().err
    with pytest.raises(ContrastError, match="unknown arm 'high'"):
        deptrial.fit_trial(DEFAULT_DATASET, ["treatment"], out=out, contrasts="high - nac")
    assert not out.exists()
