"""Coverage of the 90% posterior interval of the NAC effect over trials simulated at fixed true values
(the full 200-trial check at the published size: python -m validation.run --coverage).

Default tier: a handful of trials fitted as fit.py fits them must each hold the truth near their posterior,
with an interval that is a 90% one of posterior SD about that of a 252-participant trial; the same criterion
rejects the same trials' posteriors sign-flipped or scaled tenfold either way. Slow tier: 200 small trials,
whose coverage must lie within 3 binomial SD of 90% (0.836 to 0.964: a coverage of 80% or 97% fails)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data import TrialParameters
from data.synthetic import dose_trial_parameters
from validation.coverage import INTERVAL_PROB, run_coverage, summarise

Z_999 = 3.29  # two-sided 99.9% normal quantile
Z_INTERVAL = 1.645  # half-width of a 90% normal interval in SDs
# posterior SD of the NAC effect in a 252-participant trial: the SD of the posterior means over the 200 trials of
# validation/RESULTS.md is 0.93 (week 12) and 0.97 (week 16); a tenfold scale error either way leaves this range
POST_SD_RANGE = (0.6, 1.4)


@pytest.mark.unit
def test_summarise_counts_coverage_bias_and_rmse():
    table = pd.DataFrame({"trial": [0, 1, 2, 3], "arm": "nac", "week": 16, "true": -3.0, "post_mean": [-2.0, -4.0, -3.0, -3.0],
                          "post_sd": 1.0, "lower": [-4.0, -5.0, -2.5, -4.0], "upper": [0.0, -3.5, -1.0, -2.0],
                          "covered": [True, False, False, True], "divergences": 0})
    s = summarise(table).iloc[0]
    assert s["coverage"] == 0.5 and s["bias"] == 0.0 and np.isclose(s["rmse"], np.sqrt(0.5))


def _problems(table: pd.DataFrame) -> list[str]:
    """What is wrong with a table of a few trials' posteriors of the NAC effect (empty: nothing)."""
    out = []
    z = (table["post_mean"] - table["true"]) / table["post_sd"]
    for r, zr in zip(table.itertuples(index=False), z):
        if abs(zr) > Z_999:
            out.append(f"trial {r.trial} week {r.week}: truth {r.true:.2f} is {zr:+.1f} posterior SD from the mean {r.post_mean:.2f}")
        if r.covered != (r.lower <= r.true <= r.upper) or not r.lower < r.post_mean < r.upper:
            out.append(f"trial {r.trial} week {r.week}: interval {r.lower:.2f} to {r.upper:.2f} inconsistent")
        width = (r.upper - r.lower) / (2 * Z_INTERVAL * r.post_sd)
        if not 0.85 < width < 1.15:
            out.append(f"trial {r.trial} week {r.week}: interval {width:.2f} times the width of a 90% interval of SD {r.post_sd:.2f}")
    sd = table["post_sd"].mean()
    if not POST_SD_RANGE[0] < sd < POST_SD_RANGE[1]:
        out.append(f"mean posterior SD {sd:.2f} outside {POST_SD_RANGE}")
    for (arm, w), g in table.groupby(["arm", "week"]):
        if g["covered"].mean() < 0.5:
            out.append(f"{arm} week {w}: only {int(g['covered'].sum())} of {len(g)} intervals hold the truth")
    return out


def _flipped(table: pd.DataFrame) -> pd.DataFrame:
    """The same trials with every posterior draw's sign flipped."""
    t = table.assign(post_mean=-table["post_mean"], lower=-table["upper"], upper=-table["lower"])
    return t.assign(covered=(t["lower"] <= t["true"]) & (t["true"] <= t["upper"]))


def _scaled(table: pd.DataFrame, factor: float) -> pd.DataFrame:
    """The same trials with every posterior's spread about its mean multiplied by `factor`."""
    m = table["post_mean"]
    t = table.assign(post_sd=factor * table["post_sd"], lower=m + factor * (table["lower"] - m), upper=m + factor * (table["upper"] - m))
    return t.assign(covered=(t["lower"] <= t["true"]) & (t["true"] <= t["upper"]))


FEW = 2


@pytest.fixture(scope="module")
def few_trials():
    """2 trials of the published size (252 participants, true NAC effect -1.5 at week 12 and -3 at week 16), a few seconds each."""
    return run_coverage(FEW, seed=99, draws=250, tune=250, chains=2, cores=1, fast=True)


@pytest.mark.smoke
def test_a_few_trials_hold_the_truth_and_a_sign_flipped_or_mis_scaled_posterior_does_not(few_trials):
    table, info = few_trials
    assert info["n_trials"] == FEW and len(table) == 2 * FEW and set(table["week"]) == {12, 16}
    truth = table.groupby("week")["true"].first()
    assert truth[12] == pytest.approx(-1.5) and truth[16] == pytest.approx(-3.0)  # the generator's defaults
    assert _problems(table) == [], table.to_string()
    flipped = _problems(_flipped(table))
    # a sign error puts the truth of week 16 (-3) about 6 posterior SD from the mean, outside every interval
    assert any("week 16: truth" in p for p in flipped) and f"nac week 16: only 0 of {FEW} intervals hold the truth" in flipped, flipped
    narrow, wide = _problems(_scaled(table, 0.1)), _problems(_scaled(table, 10.0))
    assert any("posterior SD from the mean" in p for p in narrow) and any("mean posterior SD" in p for p in narrow), narrow
    assert any("mean posterior SD" in p for p in wide), wide


N_TRIALS = 200  # 3 binomial SD of 90% coverage: +-0.064, so 0.80 and 0.97 both lie outside


@pytest.mark.slow
def test_coverage_of_200_trials_is_within_3_binomial_sd_of_nominal():
    """200 trials of 60 participants, each fitted as fit.py fits it (the `treatment` model's fast variant through its
    fused log density, compiled once), one chain of 300 draws each."""
    n = N_TRIALS
    table, info = run_coverage(n, seed=99, draws=300, tune=300, chains=1, cores=1, params=TrialParameters(n_participants=60),
                               fast=True)
    summ = summarise(table).set_index("week")
    print(summ.to_string())
    assert set(summ["arm"]) == {"nac"}
    band = 3 * np.sqrt(INTERVAL_PROB * (1 - INTERVAL_PROB) / n)
    assert INTERVAL_PROB - band > 0.80 and INTERVAL_PROB + band < 0.97  # the size rules out those miscalibrations
    assert info["n_trials"] == n and set(summ.index) == {12, 16}
    for w in (12, 16):
        s = summ.loc[w]
        assert s["trials"] == n and s["divergent_trials"] <= n // 20, summ
        assert abs(s["coverage"] - INTERVAL_PROB) <= band, summ
        assert abs(s["bias"]) < 3 * s["bias_mcse"], summ
        # the posterior SD is the sampling SD of the posterior mean (a too narrow or too wide posterior fails)
        assert 0.85 < s["mean_post_sd"] / s["sd_of_post_means"] < 1.15, summ


@pytest.mark.smoke
def test_two_three_arm_trials_hold_each_arm_s_truth():
    """The small version of the three-arm coverage check: two trials of the bundled dose design (90 per arm), each
    arm's effect at weeks 12 and 16 within 3.3 posterior SD of its own truth (and not of the other arm's)."""
    table, info = run_coverage(2, seed=7, draws=250, tune=250, chains=2, cores=1, params=dose_trial_parameters(), fast=True)
    assert set(table["arm"]) == {"low", "high"} and len(table) == 2 * 2 * 2
    truth = table.groupby(["arm", "week"])["true"].first()
    assert truth[("low", 12)] == pytest.approx(-1.5) and truth[("high", 16)] == pytest.approx(-3.5)
    assert _problems(table) == [], table.to_string()
    # the arms are told apart: each posterior sits nearer its own arm's truth than the other arm's (1.5 points away)
    other = [truth[("high" if a == "low" else "low", w)] for a, w in zip(table["arm"], table["week"])]
    own_z2 = (((table["post_mean"] - table["true"]) / table["post_sd"]) ** 2).sum()
    other_z2 = (((table["post_mean"] - np.asarray(other)) / table["post_sd"]) ** 2).sum()
    assert own_z2 < other_z2, table.to_string()


@pytest.mark.slow
def test_coverage_of_each_arm_in_120_three_arm_trials():
    """120 three-arm trials (30 per arm, the bundled dose design's effects), each fitted as fit.py fits it (the
    `treatment` model's fused log density, compiled once): the 90% interval of each active arm's effect at weeks 12
    and 16 covers its truth within 3 binomial SD."""
    n = 120
    table, info = run_coverage(n, seed=11, draws=300, tune=300, chains=1, cores=1,
                               params=dose_trial_parameters(n_participants=90), fast=True)
    summ = summarise(table)
    print(summ.to_string())
    band = 3 * np.sqrt(INTERVAL_PROB * (1 - INTERVAL_PROB) / n)
    assert len(summ) == 4 and set(summ["arm"]) == {"low", "high"}
    for _, s in summ.iterrows():
        assert s["trials"] == n and s["divergent_trials"] <= n // 20, summ
        assert abs(s["coverage"] - INTERVAL_PROB) <= band, summ
        assert abs(s["bias"]) < 3 * s["bias_mcse"], summ
        assert 0.8 < s["mean_post_sd"] / s["sd_of_post_means"] < 1.25, summ
