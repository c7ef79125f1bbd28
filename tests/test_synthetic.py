"""The calibrated synthetic trial: deterministic, and its sample statistics match its parameters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from data import DEFAULT_DATASET, TrialParameters, load_dataset, simulate_trial

pytestmark = pytest.mark.unit


def test_deterministic_given_seed():
    a, b = simulate_trial(TrialParameters(seed=11)), simulate_trial(TrialParameters(seed=11))
    pd.testing.assert_frame_equal(a.visits, b.visits)
    pd.testing.assert_frame_equal(a.biomarkers, b.biomarkers)
    c = simulate_trial(TrialParameters(seed=12))
    assert not a.visits.equals(c.visits)


def test_default_dataset_is_the_generator_output(tmp_path):
    """The committed default data are exactly what the default parameters generate."""
    simulate_trial(TrialParameters()).write(tmp_path / "d")
    for name in ("participants.csv", "visits.csv", "biomarkers.csv", "dataset.toml"):
        assert (tmp_path / "d" / name).read_text() == (DEFAULT_DATASET / name).read_text(), name


@pytest.fixture(scope="module")
def big():
    """A large trial so sample statistics are close to their parameters."""
    return simulate_trial(TrialParameters(n_participants=6000, seed=5))


def test_baseline_matches_screened_distribution(big):
    p = big.params
    base = big.visits.loc[big.visits["week"] == 0, "madrs"]
    assert base.min() >= p.entry_min
    # The screened baseline is a normal truncated at entry_min (site offsets and rounding are small).
    a = (p.entry_min - 0.5 - p.baseline_mean) / p.baseline_sd
    tn = stats.truncnorm(a, np.inf, loc=p.baseline_mean, scale=p.baseline_sd)
    assert base.mean() == pytest.approx(tn.mean(), abs=0.35)
    assert base.std() == pytest.approx(tn.std(), abs=0.35)
    assert 27 <= base.mean() <= 29 and 5 <= base.std() <= 6.6  # the published 28 (5.8)


def test_arm_difference_and_placebo_change(big):
    p = big.params
    v = big.visits.merge(big.participants, on="participant_id")
    wide = v.pivot(index="participant_id", columns="week", values="madrs")
    arm = big.participants.set_index("participant_id")["arm"].reindex(wide.index)
    # completers' mean change: dropout is MAR on the score, so use everyone observed at both weeks
    for week, true in ((12, p.nac_effect_e), (16, p.nac_effect_f)):
        change = (wide[week] - wide[0]).dropna()
        diff = change[arm == "nac"].mean() - change[arm == "placebo"].mean()
        se = np.sqrt(change[arm == "nac"].var() / (arm == "nac").sum() + change[arm == "placebo"].var() / (arm == "placebo").sum()) * 1.3
        assert abs(diff - true) < 4 * se, (week, diff, true)
    placebo_change = (wide[12] - wide[0])[arm == "placebo"].mean()
    assert -13.5 < placebo_change < -9


def test_a_three_arm_trial_has_each_arm_s_effect_and_allocation():
    """The k-arm generator: allocation by the weights, each active arm's complete-data difference from control at
    weeks 12 and 16 within 4 SE of its own truth, and the bundled dose example regenerates byte for byte."""
    from data.synthetic import dose_trial_parameters

    p = dose_trial_parameters(n_participants=3000, seed=3, allocation=(2, 1, 1))
    trial = simulate_trial(p)
    counts = trial.participants["arm"].value_counts()
    assert counts.to_dict() == {"placebo": 1500, "low": 750, "high": 750}
    wide = trial.complete.pivot(index="participant_id", columns="week", values="madrs")
    arm = trial.participants.set_index("participant_id")["arm"].reindex(wide.index)
    for a, name in enumerate(("low", "high")):
        for week in (12, 16):
            change = wide[week] - wide[0]
            diff = change[arm == name].mean() - change[arm == "placebo"].mean()
            se = np.sqrt(change[arm == name].var() / counts[name] + change[arm == "placebo"].var() / counts["placebo"])
            true = trial.truth["effect_by_arm_week"][name][str(week)]
            assert true == pytest.approx(p.effect_at(week, a))
            assert abs(diff - true) < 4 * se, (name, week, diff, true)
    assert trial.truth["effect_by_arm_week"]["high"]["12"] == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="positive weight"):
        simulate_trial(p.with_(allocation=(1, 1)))


def test_the_bundled_dose_trial_is_the_generator_s(tmp_path):
    from data.synthetic import dose_trial_parameters

    simulate_trial(dose_trial_parameters()).write(tmp_path / "dose")
    bundled = Path(__file__).resolve().parents[1] / "data" / "dose"
    for name in ("dataset.toml", "participants.csv", "visits.csv", "biomarkers.csv", "truth.json"):
        assert (tmp_path / "dose" / name).read_bytes() == (bundled / name).read_bytes(), name


def test_dropout_and_biomarkers(big):
    p = big.params
    assert abs(big.truth["dropout_by_last_week"] - p.dropout_by_last_week) < 0.04
    b = big.biomarkers
    base = b[b["week"] == 0]
    n_serum = base["participant_id"].nunique()
    assert abs(n_serum / p.n_participants - p.serum_fraction) < 0.03
    for mk, med, sd in zip(p.markers, p.marker_median, p.marker_log_sd):
        vals = base.loc[(base["marker"] == mk) & (base["below_lod"] == 0), "value"]
        if mk == "il6":  # censoring removes the lowest values; compare the upper quantile instead
            assert np.log(vals.quantile(0.75)) == pytest.approx(np.log(med) + 0.674 * sd, abs=0.08)
        else:
            assert np.log(vals.median()) == pytest.approx(np.log(med), abs=0.06)
            assert np.log(vals).std() == pytest.approx(sd, rel=0.06)
    il6 = base[base["marker"] == "il6"]
    expected_below = stats.norm.cdf((np.log(0.7) - np.log(2.0)) / 0.7)
    assert il6["below_lod"].mean() == pytest.approx(expected_below, abs=0.02)
    # baseline-week 12 correlation on the log scale, BDNF (never censored)
    bd = b[b["marker"] == "bdnf"].pivot(index="participant_id", columns="week", values="value").dropna()
    r = np.corrcoef(np.log(bd[0]), np.log(bd[12]))[0, 1]
    assert r == pytest.approx(p.marker_stability, abs=0.06)


def test_written_dataset_round_trips(tmp_path):
    trial = simulate_trial(TrialParameters(n_participants=50, seed=9))
    trial.write(tmp_path / "t")
    ds = load_dataset(tmp_path / "t")
    assert ds.sizes["participant"] == 50
    assert int(np.isfinite(ds["score"].values).sum()) == len(trial.visits)
    truth = json.loads((tmp_path / "t" / "truth.json").read_text())
    assert truth["nac_effect_by_week"]["16"] == pytest.approx(-3.0)
    assert truth["nac_effect_by_week"]["12"] == pytest.approx(-1.5)


def test_write_refuses_to_overwrite(tmp_path):
    trial = simulate_trial(TrialParameters(n_participants=20, seed=1))
    trial.write(tmp_path / "t")
    with pytest.raises(FileExistsError):
        trial.write(tmp_path / "t")
