"""A retrieved-dropout fit (`mmrm_retrieved`) in the submission outputs: its efficacy table and ARD present the treatment
policy as the primary estimand (the numbers of its treatment-policy rows of estimates.csv, recomputed here from the
posterior draws and the trial's off_treatment flags) with the on-treatment difference as supportive rows; its sensitivity
table opens with the treatment-policy row; its responder rates impute the visits missed after stopping treatment from the
off-treatment model (against the conditional normal computed here); and its off_treatment flags survive an ADaM round
trip (data/adam_export.py writes ONTRTFL and TRTEDT, data/adam.py reads them back).

The smoke tier fits one small trial once (2 chains x 150 draws, fit.py with --sensitivity), for these checks and for the
retrieved-dropout model's own rows (tests/test_retrieved_dropouts.py's subject); the unit tier builds draws by hand or only
writes and reads files."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import fit
from data import load_dataset, simulate_trial
from data.adam import AdamOptions, load_adam
from data.adam_export import DATASET_LABELS, adam_tables, write_adam, write_xpt
from data.meta import META_FILE
from data.synthetic import TrialParameters
from diagnostics import table_formats as fmt
from diagnostics.csr_tables import ARD_FILE, check_ard, read_ard
from diagnostics.responders import completed_scores, responder_table
from models import build_design
from models.mmrm import OFF_EFFECT, mmrm_data
from models.mmrm_retrieved import NAME, posterior_policy
from tests.test_responders import _idata, _means, mmrm_posterior
from tests.test_retrieved_dropouts import RETRIEVED, toy
from tests.test_submission_tables import read_docx, read_rtf

PRIMARY = f"{NAME}: primary (treatment policy, retrieved dropouts)"
SUPPORTIVE = f"{NAME}: supportive (while on treatment, hypothetical)"
MCID = 2.0


@pytest.fixture(scope="module")
def trial_dir(tmp_path_factory) -> Path:
    """90 participants, 40% stop treatment by the end of treatment, half of them keep attending."""
    folder = tmp_path_factory.mktemp("retrieved_tables") / "trial"
    simulate_trial(TrialParameters(n_participants=90, seed=5, **RETRIEVED), policy_truth=False).write(folder)
    return folder


@pytest.fixture(scope="module")
def fitted(trial_dir, tmp_path_factory) -> Path:
    """The trial fitted tiny through fit.py with the sensitivity analyses: the model's results folder."""
    out = tmp_path_factory.mktemp("retrieved_tables") / "results"
    assert fit.main(["--data", str(trial_dir), "--model", NAME, "--draws", "150", "--tune", "200", "--chains", "2",
                     "--prior-draws", "20", "--seed", "3", "--jobs", "1", "--mcid", str(MCID), "--sensitivity", "--quiet",
                     "--out", str(out)]) == 0
    return out / NAME


def _flat(post, name: str, *dims) -> np.ndarray:
    x = post[name].transpose("chain", "draw", *dims).values
    return x.reshape((-1,) + x.shape[2:])


def _value(ard: pd.DataFrame, analysis: str, who: str, visit, statistic: str) -> float:
    rows = ard[(ard["analysis"] == analysis) & (ard["arm_or_contrast"] == who) & (ard["statistic"] == statistic)]
    rows = rows[rows["visit"].isna()] if visit is None else rows[rows["visit"] == visit]
    assert len(rows) == 1, (analysis, who, visit, statistic, len(rows))
    return float(rows["value"].iloc[0])


# ---------------------------------------------------------------- the efficacy table and the ARD


@pytest.mark.smoke
def test_the_ard_has_the_treatment_policy_as_primary_with_the_numbers_of_estimates_and_the_draws(fitted, trial_dir):
    from inference.storage import load_fit

    ard = read_ard(fitted / ARD_FILE)
    check_ard(ard)
    efficacy = ard[ard["table"] == "efficacy"]
    assert list(dict.fromkeys(efficacy["analysis"])) == [PRIMARY, SUPPORTIVE]
    est = pd.read_csv(fitted / "estimates.csv")
    policy = est[est["quantity"].str.contains("treatment policy")].set_index("week")
    assert policy["intercurrent_events"].str.startswith("treatment policy").all()
    weeks = [2, 4, 6, 8, 12, 16]
    assert policy.index.tolist() == weeks
    contrast = "nac - placebo"
    for w in weeks:  # the treatment-policy rows of estimates.csv, number for number
        assert _value(ard, PRIMARY, contrast, w, "mean") == pytest.approx(policy.loc[w, "mean"], rel=1e-9, abs=1e-12)
        assert _value(ard, PRIMARY, contrast, w, "p_benefit") == pytest.approx(policy.loc[w, "p_below_0"], abs=1e-12)
        assert _value(ard, PRIMARY, contrast, w, "p_benefit_mcid") == pytest.approx(policy.loc[w, f"p_below_-{MCID:g}"], abs=1e-12)
    on = est[est["quantity"] == "nac - placebo mean MADRS at week 12"].iloc[0]  # the model's own d: the supportive row
    assert _value(ard, SUPPORTIVE, contrast, 12, "mean") == pytest.approx(on["mean"], rel=1e-9)
    assert on["intercurrent_events"].startswith("treatment discontinuation: hypothetical strategy")
    sens = pd.read_csv(fitted / "sensitivity.csv")
    rows = sens[sens["strategy"] == "treatment_policy"].set_index("week")
    for w in weeks:
        assert _value(ard, f"{NAME}: treatment_policy", contrast, w, "mean") == pytest.approx(rows.loc[w, "mean"], rel=1e-9)

    # every statistic again, from the draws and the trial's own flags (not through models/mmrm_retrieved.py)
    post = load_fit(fitted / "idata.nc").posterior
    ds = load_dataset(trial_dir)
    arm = ds["arm_index"].values
    off = ds["off_treatment"].values[:, 1:].astype(bool)
    seen = ~np.isnan(ds["score"].values[:, 1:])
    share = np.stack([off[arm == a].mean(axis=0) for a in (0, 1)])  # arm x post-baseline week
    theta = _flat(post, OFF_EFFECT, "arm", "visit")
    d = _flat(post, "nac_visit_effect", "active_arm", "visit")[:, 0]
    control = _flat(post, "placebo_change", "week")[:, 1:]
    tp = d + share[1] * theta[:, 1] - share[0] * theta[:, 0]
    means = {"placebo": control + share[0] * theta[:, 0], "nac": control + d + share[1] * theta[:, 1]}
    assert int(_value(ard, PRIMARY, "", None, "n_draws")) == len(d) == 300
    for j, w in enumerate(weeks):
        for name, x in [(contrast, tp[:, j]), *[(a, m[:, j]) for a, m in means.items()]]:
            lo, hi = np.quantile(x, [0.025, 0.975])
            np.testing.assert_allclose([_value(ard, PRIMARY, name, w, s) for s in ("mean", "cri_lower", "cri_upper")],
                                       [x.mean(), lo, hi], rtol=1e-9, atol=1e-9)
        assert _value(ard, PRIMARY, contrast, w, "p_benefit") == np.mean(tp[:, j] < 0)
        lo, hi = np.quantile(d[:, j], [0.025, 0.975])
        np.testing.assert_allclose([_value(ard, SUPPORTIVE, contrast, w, s) for s in ("mean", "cri_lower", "cri_upper", "p_benefit")],
                                   [d[:, j].mean(), lo, hi, np.mean(d[:, j] < 0)], rtol=1e-9, atol=1e-9)
        for a, label in enumerate(("placebo", "nac")):
            assert _value(ard, PRIMARY, label, w, "n_off_treatment") == off[arm == a, j].sum()
            assert _value(ard, PRIMARY, label, w, "n_retrieved") == (off & seen)[arm == a, j].sum()
            assert _value(ard, PRIMARY, label, w, "n_observed") == seen[arm == a, j].sum()
    assert share[:, -1].min() > 0.2 and np.abs(tp.mean(axis=0) - d.mean(axis=0)).max() > 0.5  # the two estimands differ here


def _cells(doc: dict) -> dict:
    """{(week, row label): cells per arm} of an efficacy table read back."""
    out, week = {}, None
    for row in doc["rows"][1:]:
        if row[0]:
            week = None if row[0] == "Baseline" else int(re.match(r"Week (\d+)", row[0]).group(1))
        out[(week, row[1])] = row[2:]
    return out


@pytest.mark.smoke
def test_the_efficacy_table_files_show_the_treatment_policy_rows_and_the_supportive_ones(fitted):
    ard = read_ard(fitted / ARD_FILE)
    cri = "(95% CrI)"
    labels = {f"Primary, treatment policy: mean change from baseline {cri}": (PRIMARY, "arm"),
              f"Primary, treatment policy: difference vs placebo {cri}": (PRIMARY, "contrast"),
              "P(benefit)": (PRIMARY, "p_benefit"), "P(benefit > MCID)": (PRIMARY, "p_benefit_mcid"),
              f"Supportive, while on treatment / hypothetical: difference vs placebo {cri}": (SUPPORTIVE, "contrast"),
              "Supportive, while on treatment / hypothetical: P(benefit)": (SUPPORTIVE, "p_benefit")}
    for doc in (read_rtf((fitted / "efficacy_table.rtf").read_bytes()), read_docx((fitted / "efficacy_table.docx").read_bytes())):
        assert doc["title"][-1].startswith("Primary estimand: treatment policy (ICH E9(R1)), retrieved dropouts: difference in mean "
                                           "change from baseline (nac - placebo) over all randomised participants")
        notes = " ".join(doc["footnotes"])
        assert "Primary estimand, treatment policy (ICH E9(R1)), weeks 2, 4, 6, 8, 12 and 16: treatment policy: the change" in notes
        assert "Supportive estimand, while on treatment / hypothetical: the difference had every participant stayed" in notes
        cells = _cells(doc)
        checked = 0
        for w in (2, 4, 6, 8, 12, 16):
            assert [label for week, label in cells if week == w] == ["n observed", "n off treatment (attended)", *labels]
            for arm, cell in zip(("placebo", "nac"), cells[(w, "n off treatment (attended)")]):
                assert cell == (f"{int(_value(ard, PRIMARY, arm, w, 'n_off_treatment'))} "
                                f"({int(_value(ard, PRIMARY, arm, w, 'n_retrieved'))})")
            for label, (analysis, what) in labels.items():
                placebo, nac = cells[(w, label)]
                if what == "arm":
                    for a, cell in (("placebo", placebo), ("nac", nac)):
                        assert cell == fmt.mean_cri(*[_value(ard, analysis, a, w, s) for s in ("mean", "cri_lower", "cri_upper")])
                    checked += 2
                    continue
                assert placebo == ""
                if what == "contrast":
                    assert nac == fmt.mean_cri(*[_value(ard, analysis, "nac - placebo", w, s) for s in ("mean", "cri_lower", "cri_upper")])
                else:
                    assert nac == fmt.probability(_value(ard, analysis, "nac - placebo", w, what))
                checked += 1
        assert checked == 6 * 7


@pytest.mark.smoke
def test_the_sensitivity_table_opens_with_the_treatment_policy_and_names_mar_on_treatment(fitted):
    ard = read_ard(fitted / ARD_FILE)
    doc = read_docx((fitted / "sensitivity_table.docx").read_bytes())
    body = doc["rows"][2:]
    assert body[0][0] == "Treatment policy, retrieved dropouts (primary)" and body[1][0] == "MAR, while on treatment (hypothetical)"
    for row, analysis in ((body[0], f"{NAME}: treatment_policy"), (body[1], f"{NAME}: MAR")):
        assert row[1] == fmt.mean_cri(*[_value(ard, analysis, "nac - placebo", 12, s) for s in ("mean", "cri_lower", "cri_upper")])
    # the sensitivity table's MAR is the efficacy table's supportive difference, draw for draw
    assert _value(ard, f"{NAME}: MAR", "nac - placebo", 12, "mean") == pytest.approx(_value(ard, SUPPORTIVE, "nac - placebo", 12, "mean"),
                                                                                      rel=1e-12)
    assert doc["footnotes"][0].startswith("Treatment policy, retrieved dropouts (primary): treatment policy: the change whatever")


@pytest.mark.smoke
def test_the_saved_fit_gives_the_same_ard_and_both_tables(fitted):
    """diagnose.py's route: the efficacy rows from the saved posterior, the sensitivity rows (the treatment-policy ones
    included) recomputed from the fit and accepted because they equal the saved sensitivity.csv."""
    from diagnostics.csr_tables import saved_submission_tables
    from diagnostics.sensitivity_analyses import saved_sensitivity
    from inference.storage import load_fit

    idata = load_fit(fitted / "idata.nc", complete=False)
    again = saved_submission_tables(fitted.parent, {NAME: idata}, saved_sensitivity(fitted.parent, {NAME: idata}))[NAME]
    assert again.notes == {} and set(again.layouts()) == {"efficacy_table", "sensitivity_table"}
    pd.testing.assert_frame_equal(again.ard, read_ard(fitted / ARD_FILE))


@pytest.mark.smoke
def test_the_fit_writes_treatment_policy_responder_rates(fitted):
    table = pd.read_csv(fitted / "responders.csv")
    assert list(dict.fromkeys(table["estimand"])) == ["treatment_policy", "NRI"]
    policy = table[table["estimand"] == "treatment_policy"]
    assert policy["estimand_text"].str.contains("treatment discontinuation: treatment policy").all()
    assert policy["note"].str.contains("imputed (after stopping treatment: off-treatment model)", regex=False).any()


@pytest.mark.smoke
def test_a_tiny_fit_writes_the_treatment_policy_rows(fitted):
    """The fit's treatment-policy rows of estimates.csv and sensitivity.csv (the same draws), the other analyses beside
    them; the multiplicative tipping point's imputations by hand; with nobody off treatment, exactly the MAR draws."""
    from diagnostics.sensitivity import POLICY, arm_strategy_effects, model_pieces
    from inference.storage import load_fit, saved_dataset

    est = pd.read_csv(fitted / "estimates.csv")
    tp = est[est["quantity"].str.contains("treatment policy")]
    assert tp["week"].tolist() == [2, 4, 6, 8, 12, 16]
    assert tp["intercurrent_events"].str.contains("regardless of treatment discontinuation").all()
    on = est[est["quantity"] == "nac - placebo mean MADRS at week 12"]
    assert on["intercurrent_events"].iloc[0].startswith("treatment discontinuation: hypothetical strategy, as if every participant")
    sens = pd.read_csv(fitted / "sensitivity.csv")
    rows = sens[sens["strategy"] == POLICY].set_index("week")
    np.testing.assert_allclose(rows.loc[tp["week"], "mean"], tp["mean"].to_numpy(), rtol=1e-12)
    assert (rows["dropout_share"] > 0).all() and rows["estimand"].str.contains("treatment policy").all()
    assert {"MAR", "J2R", "CR", "CIR"} <= set(sens["strategy"])  # the other analyses are still there
    idata = load_fit(fitted / "idata.nc")
    assert int(idata.sample_stats["diverging"].sum()) == 0
    design = build_design(saved_dataset(idata))
    assert json.loads((fitted.parent / "run.json").read_text())["models"][NAME]["timings"]["fused_log_density"] == 1.0
    # the multiplicative tipping point's imputed changes (the on-treatment MAR imputation of the model's d), per participant by
    # hand: an observed change after stopping is compared with its own mean, the on-treatment one plus the arm's shift
    from diagnostics.sensitivity import imputed_changes
    from models.mmrm import mmrm_data, visit_covariance

    post = idata.posterior
    flat = lambda name: post[name].transpose("chain", "draw", ...).values.reshape((-1,) + post[name].shape[2:])  # noqa: E731
    vm, nac, slope, site, theta = (flat(v) for v in ("visit_mean", "nac_visit_effect", "baseline_slope", "site_effect",
                                                      "off_treatment_effect"))
    cov = visit_covariance(post).reshape((len(vm),) + (vm.shape[1],) * 2)
    wide = design.wide_scores()
    change, base = wide[:, 1:] - wide[:, [0]], wide[:, 0] - mmrm_data(design).baseline_center
    off = design.off_treatment[:, 1:]
    expected = np.zeros((len(vm), 2, vm.shape[1]))
    for i in range(design.n_participants):
        seen = np.flatnonzero(~np.isnan(change[i]))
        later = np.arange(seen.max() + 1 if len(seen) else 0, vm.shape[1])
        if not len(later):
            continue
        a = design.arm_idx[i]
        mu = vm + (nac[:, 0] if a else 0.0) + slope * base[i] + site[:, [design.site_idx[i]]]
        c = mu[:, later]
        if len(seen):
            resid = change[i, seen] - mu[:, seen] - theta[:, a][:, seen] * off[i, seen]
            gain = np.linalg.solve(cov[:, seen][:, :, seen], cov[:, seen][:, :, later])  # draws x O x T
            c = c + np.einsum("so,sot->st", resid, gain)
        expected[:, a, later] += c / (design.arm_idx == a).sum()
    np.testing.assert_allclose(imputed_changes(idata, design, model_pieces(idata, design)), expected, rtol=1e-8, atol=1e-8)
    # nobody off treatment: the treatment-policy draws are the MAR draws exactly, in estimates and in sensitivity.csv
    nobody = dataclasses.replace(design, off_treatment=np.zeros_like(design.off_treatment))
    d = idata.posterior["nac_visit_effect"].transpose("chain", "draw", "active_arm", "visit").values
    np.testing.assert_array_equal(posterior_policy(idata.posterior, nobody)[0], d.reshape((-1,) + d.shape[2:]))
    effects = arm_strategy_effects(model_pieces(idata, nobody), nobody)
    np.testing.assert_array_equal(effects[("nac", POLICY)].draws, effects[("nac", "MAR")].draws)
    assert not effects[("nac", POLICY)].share_treatment.any()


# ---------------------------------------------------------------- responders: the off-treatment imputation


@pytest.mark.unit
def test_responder_imputation_adds_the_off_treatment_shift_where_the_participant_is_off(trial_dir):
    """Hand-made draws (two parameter sets, a shift theta of 6 to 10 points): the imputed changes' means are the conditional
    normal means whose mu has theta[arm, v] at every visit off treatment (the trial's own flags), observed or missing."""
    ds = load_dataset(trial_dir)
    design = build_design(ds)
    nv = len(design.weeks) - 1
    rng = np.random.default_rng(8)
    covs = []
    for _ in range(2):
        a = rng.normal(size=(nv, nv))
        covs.append(a @ a.T + nv * np.eye(nv))
    means = [_means(nv, len(design.sites), rng) for _ in range(2)]
    thetas = [rng.uniform(6, 10, (2, nv)) * rng.choice([-1, 1], (2, nv)) for _ in range(2)]
    draws = 4000
    post = mmrm_posterior(design, covs, means, draws)
    post[OFF_EFFECT] = xr.DataArray(np.array(thetas)[np.arange(draws) % 2][None], dims=("chain", "draw", "arm", "visit"))
    post = post.assign_coords(arm=list(design.arms))
    post.attrs["model"] = NAME
    done = completed_scores(_idata(post), design, weeks="all", seed=2, scale=False)
    score = ds["score"].values
    off = ds["off_treatment"].values[:, 1:].astype(bool)
    base, arm, site = score[:, 0], ds["arm_index"].values, design.site_idx
    center = mmrm_data(design).baseline_center
    worst, shifted = 0.0, 0
    for i in np.flatnonzero(done.missing.any(axis=1)):
        o, m = np.flatnonzero(~done.missing[i]), np.flatnonzero(done.missing[i])
        shifted += int(off[i, m].sum())
        for s in range(2):
            p = means[s]
            mu = (p["visit_mean"] + p["nac_visit_effect"][0] * arm[i] + p["baseline_slope"] * (base[i] - center) + p["site_effect"][site[i]]
                  + thetas[s][arm[i]] * off[i])
            c = covs[s]
            change = score[i, 1:] - base[i]
            w = np.linalg.solve(c[np.ix_(o, o)], c[np.ix_(o, m)]).T if len(o) else np.zeros((len(m), 0))
            cmean = mu[m] + w @ (change[o] - mu[o])
            ccov = c[np.ix_(m, m)] - w @ c[np.ix_(o, m)]
            imputed = done.scores[s::2, i][:, m] - base[i]
            z = (imputed.mean(axis=0) - cmean) / np.sqrt(np.diag(ccov) / len(imputed))
            worst = max(worst, np.abs(z).max())
    assert shifted > 20 and worst < 4.5, (shifted, worst)  # hundreds of exact normal means; without the shift, tens of SEs off
    table = responder_table(_idata(post), design, seed=1, weeks=[12])
    assert set(table["estimand"]) == {"treatment_policy", "NRI"}


# ---------------------------------------------------------------- ADaM: ONTRTFL and TRTEDT


def _read(folder: Path, **options):
    return load_adam(AdamOptions(folder / "adsl.xpt", folder / "adqs.xpt", **options))


@pytest.mark.unit
def test_adam_export_writes_ontrtfl_and_trtedt_that_read_back_as_the_same_flags(trial_dir, tmp_path):
    ds = load_dataset(trial_dir)
    write_adam(trial_dir, tmp_path / "adam")
    back, _ = _read(tmp_path / "adam")
    np.testing.assert_array_equal(back["off_treatment"].values, ds["off_treatment"].values)
    np.testing.assert_array_equal(back["score"].values, ds["score"].values)
    assert back["participant"].values.tolist() == ds["participant"].values.tolist()

    tables, config = adam_tables(trial_dir, "RT")
    adsl, adqs = tables["adsl"].set_index("SUBJID"), tables["adqs"]
    weeks = ds["week"].values
    off = pd.DataFrame(ds["off_treatment"].values, index=ds["participant"].values, columns=weeks)
    last = {p: weeks[np.flatnonzero(np.isfinite(r))[-1]] for p, r in zip(ds["participant"].values, ds["score"].values)}
    stopped = [p for p in off.index if off.loc[p].any()]
    left_on = [p for p in off.index if not off.loc[p].any() and last[p] < 12]  # left the trial on treatment
    assert len(stopped) > 20 and left_on
    for p in stopped:  # the last dose: 3 days after the visit before the first one off treatment
        before = weeks[np.flatnonzero(off.loc[p].to_numpy())[0] - 1]
        assert adsl.loc[p, "TRTEDT"] == adsl.loc[p, "TRTSDT"] + dt.timedelta(days=7 * int(before) + 3)
        assert adsl.loc[p, "EOTSTT"] == "DISCONTINUED" and adsl.loc[p, "DCTREAS"]
    assert adsl.loc[left_on, "TRTEDT"].isna().all() and (adsl.loc[left_on, "EOTSTT"] == "DISCONTINUED").all()
    # ONTRTFL: 'Y' on the scheduled post-baseline records on treatment in the treatment phase, blank elsewhere
    rec = adqs[(adqs["DTYPE"] == "") & (adqs["ANL01FL"] == "Y")].assign(SUBJID=lambda f: f["USUBJID"].str.removeprefix("RT-"))
    expected = [w > 0 and w <= 12 and not off.loc[p, int(w)] for p, w in zip(rec["SUBJID"], rec["AVISITN"])]
    assert (rec["ONTRTFL"] == "Y").tolist() == expected

    # from the dates alone (no ONTRTFL: ADT after TRTEDT), and the intercurrent events of the ADSL, at the first week off
    del tables["adqs"]["ONTRTFL"]
    out = tmp_path / "dates"
    out.mkdir()
    for name, frame in tables.items():
        write_xpt(frame, out / f"{name}.xpt", name.upper(), DATASET_LABELS[name])
    (out / META_FILE).write_text(config, encoding="utf-8")
    dated, ice = _read(out, ice_strategy={"*": "J2R"})
    np.testing.assert_array_equal(dated["off_treatment"].values, ds["off_treatment"].values)
    events = {str(p): int(w) for p, (w, _) in ice.by_participant().items()}
    assert events == {p: int(weeks[np.flatnonzero(off.loc[p].to_numpy())[0]]) for p in stopped}


@pytest.mark.unit
def test_adam_round_trip_of_the_four_participant_trial(tmp_path):
    """P2 stops before week 8 and attends it; P3 stops before week 4, attends it and misses week 8 (a row off treatment);
    P4 leaves after week 4 on treatment (no last dose known: its missed week 8 stays on treatment)."""
    folder = toy(tmp_path / "toy")
    ds = load_dataset(folder)
    write_adam(folder, tmp_path / "adam", screen_failures=0)
    back, _ = _read(tmp_path / "adam")
    assert back["off_treatment"].values.tolist() == ds["off_treatment"].values.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 0, 0]]
    tables, _ = adam_tables(folder, "TOY", screen_failures=0)
    adsl = tables["adsl"].set_index("SUBJID")
    assert adsl["EOTSTT"].tolist() == ["COMPLETED", "DISCONTINUED", "DISCONTINUED", "DISCONTINUED"]
    assert [None if pd.isna(x) else (x - s).days for x, s in zip(adsl["TRTEDT"], adsl["TRTSDT"])] == [56, 31, 3, None]
