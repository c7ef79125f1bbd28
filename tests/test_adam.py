"""CDISC ADaM in (data/adam.py) and out (data/adam_export.py), without fits: the bundled trials' ADaM files load as the
same Dataset as their CSV folders and regenerate byte for byte; varied synthetic trials survive the round trip; LOCF/BOCF
records change nothing and are counted; intercurrent events come from the ADSL; every bad input of the issue is refused
naming the file, variable and subjects or records; the scales, visits and [adam] table are read as documented."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data import DEFAULT_DATASET, DOSE_DATASET, DatasetError, changes_of, load_dataset, simulate_trial
from data.adam import AdamOptions, load_adam, parse_visit, read_adam, recognise_scale
from data.adam_export import DATASET_LABELS, adam_tables, write_adam, write_xpt
from data.adam_options import parse_ice_strategy, parse_visit_map
from data.meta import META_FILE
from data.synthetic import TrialParameters

ADAM = DEFAULT_DATASET.parent / "adam_trials"
pytestmark = pytest.mark.unit


def same_trial(a, b) -> None:
    """Every variable and coordinate equal, and the metadata."""
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        assert a[name].equals(b[name]), name
        assert a[name].dtype == b[name].dtype, name
    assert a.equals(b)
    assert json.loads(a.attrs["meta"]) == json.loads(b.attrs["meta"])
    assert a.attrs["has_biomarkers"] == b.attrs["has_biomarkers"]


def options(folder: Path, **kw) -> AdamOptions:
    return AdamOptions(folder / "adsl.xpt", folder / "adqs.xpt", **kw)


def write(folder: Path, tables: dict, config: str, fmt: str = "xpt") -> Path:
    """ADaM tables (as adam_tables returns them, perhaps altered) written as files with their dataset.toml."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        if fmt == "xpt":
            write_xpt(frame, folder / f"{name}.xpt", name.upper(), DATASET_LABELS[name])
        elif fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{name}.parquet")
    (folder / META_FILE).write_text(config.replace("adlb.xpt", f"adlb.{fmt}"), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 40-participant trial with biomarkers and dropout, its folder and its ADaM tables (unaltered)."""
    folder = tmp_path_factory.mktemp("adam") / "small"
    simulate_trial(TrialParameters(n_participants=40, seed=11, dropout_by_last_week=0.4)).write(folder)
    tables, config = adam_tables(folder, "SMALL")
    return folder, tables, config


def altered(tmp_path, small, change=None, config_change=None, fmt="xpt") -> Path:
    folder, tables, config = small
    tables = {k: v.copy() for k, v in tables.items()}
    if change:
        change(tables)
    if config_change:
        config = config_change(config)
    return write(tmp_path / "adam", tables, config, fmt)


def refused(opts, *words) -> str:
    with pytest.raises(DatasetError) as err:
        load_adam(opts)
    text = str(err.value)
    for word in words:
        assert word in text, (word, text)
    return text


# ---------------------------------------------------------------- the bundled trials


@pytest.mark.parametrize("name, folder", [("default", DEFAULT_DATASET), ("dose", DOSE_DATASET)])
def test_bundled_adam_files_load_as_the_csv_folder(name, folder):
    """Scores, arms (the dose trial's order low, high from TRT01PN), sites, covariates, markers, below_lod and the metadata:
    a fit from the ADaM files sees exactly the data of the folder, so it gives the same estimates for the same seed."""
    ds, ice = load_adam(options(ADAM / name))
    same_trial(load_dataset(folder), ds)
    assert ice is None
    assert ds.attrs["source"].startswith(f"ADaM {(ADAM / name / 'adsl.xpt').resolve()}")
    assert "derived records excluded: BOCF" in ds.attrs["source"]


@pytest.mark.parametrize("name, folder", [("default", DEFAULT_DATASET), ("dose", DOSE_DATASET)])
def test_bundled_adam_files_regenerate_byte_for_byte(name, folder, tmp_path):
    out = write_adam(folder, tmp_path / name, studyid=name.upper())
    shipped = sorted(p.name for p in (ADAM / name).iterdir())
    assert sorted(p.name for p in out.iterdir()) == shipped == ["adlb.xpt", "adqs.xpt", "adsl.xpt", META_FILE]
    for file in shipped:
        assert (out / file).read_bytes() == (ADAM / name / file).read_bytes(), file


def test_bundled_files_are_small_and_standard():
    import pyreadstat

    assert sum(p.stat().st_size for p in ADAM.glob("*/*")) < 1_000_000
    adsl, meta = pyreadstat.read_xport(str(ADAM / "default" / "adsl.xpt"))
    assert meta.table_name == "ADSL" and meta.file_label == DATASET_LABELS["adsl"]
    assert {"USUBJID", "SUBJID", "SITEID", "TRT01P", "TRT01PN", "ITTFL", "FASFL", "AGE", "SEX", "TRTSDT", "TRTEDT", "EOTSTT",
            "DCTREAS"} <= set(adsl.columns)
    assert all(len(c) <= 8 for c in adsl.columns)  # transport version 5 names
    adqs, _ = pyreadstat.read_xport(str(ADAM / "default" / "adqs.xpt"))
    assert set(adqs["AVISIT"]) == {"Baseline", "Week 2", "Week 4", "Week 6", "Week 8", "Week 12", "Week 16 (Follow-up)", "Unscheduled"}
    assert set(adqs["DTYPE"]) == {"", "LOCF", "BOCF"}
    base = adqs[adqs["ABLFL"] == "Y"]
    assert (base["AVISIT"] == "Baseline").all() and base["USUBJID"].is_unique
    assert set(adsl.loc[adsl["EOTSTT"] == "DISCONTINUED", "DCTREAS"]) == {"ADVERSE EVENT", "LACK OF EFFICACY", "WITHDRAWAL BY SUBJECT"}


# ---------------------------------------------------------------- varied trials


def _no_markers(folder: Path, params: TrialParameters) -> None:
    sim = simulate_trial(params)
    sim.biomarkers = sim.biomarkers.iloc[0:0]
    sim.write(folder)
    meta = replace(params.meta(), marker_units={}, detection_limits={})
    (folder / META_FILE).write_text(meta.to_toml(), encoding="utf-8")


def _covariates(folder: Path, params: TrialParameters) -> None:
    simulate_trial(params).write(folder)
    with open(folder / META_FILE, "a", encoding="utf-8") as fh:
        fh.write('\n[covariates]\nage = "continuous"\nsex = "categorical"\n')


VARIANTS = {
    "four arms": (TrialParameters(n_participants=48, seed=3, treatment_arm="low", more_arms=(("mid", -1.0, -1.5), ("high", -2.0, -2.5)),
                                  doses=(("placebo", 0.0), ("low", 10.0), ("mid", 20.0), ("high", 40.0))), None),
    "one site": (TrialParameters(n_participants=30, seed=4, sites=("solo",), site_weights=(1.0,)), None),
    "no biomarkers": (TrialParameters(n_participants=30, seed=5), _no_markers),
    "heavy dropout": (TrialParameters(n_participants=50, seed=6, dropout_by_last_week=0.8, dropout_score_effect=0.0), None),
    "declared covariates": (TrialParameters(n_participants=30, seed=8), _covariates),
    "no follow-up": (TrialParameters(n_participants=30, seed=9, weeks=(0, 1, 2, 4, 6), treatment_end=6), None),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_varied_trials_survive_the_round_trip(variant, tmp_path):
    params, make = VARIANTS[variant]
    folder = tmp_path / "csv"
    (make or (lambda f, p: simulate_trial(p).write(f)))(folder, params)
    out = write_adam(folder, tmp_path / "adam")
    ds, _ = load_adam(options(out))
    same_trial(load_dataset(folder), ds)
    if variant == "heavy dropout":  # participants seen at baseline only: their carried-forward records are BOCF
        only_baseline = int((np.isfinite(ds["score"].values).sum(axis=1) == 1).sum())
        assert only_baseline > 0
        bocf = sum(e["count"] for e in json.loads(ds.attrs["adam"])["excluded"] if e["value"] == "BOCF")
        assert bocf == only_baseline * (ds.sizes["week"] - 1)
    if variant == "no biomarkers":
        assert not (out / "adlb.xpt").exists() and "marker" not in ds.dims


def test_csv_and_parquet_files_read_as_the_transport_files(tmp_path, small):
    folder, tables, config = small
    expected = load_dataset(folder)
    for fmt in ("csv", "parquet"):
        out = write(tmp_path / fmt, tables, config, fmt)
        ds, _ = load_adam(AdamOptions(out / f"adsl.{fmt}", out / f"adqs.{fmt}"))
        same_trial(expected, ds)


# ---------------------------------------------------------------- derived records, flags, intercurrent events


def test_locf_records_change_nothing_and_are_counted_per_arm_and_visit(tmp_path, small):
    folder, tables, _ = small
    with_locf, _ = load_adam(options(altered(tmp_path / "a", small)))
    without = altered(tmp_path / "b", small, lambda t: t.update(adqs=t["adqs"][t["adqs"]["DTYPE"] == ""]))
    plain, _ = load_adam(options(without))
    same_trial(plain, with_locf)
    adqs = tables["adqs"]
    derived = adqs[adqs["DTYPE"] != ""].merge(tables["adsl"][["USUBJID", "TRT01P"]], on="USUBJID")
    counted = [e for e in json.loads(with_locf.attrs["adam"])["excluded"] if e["rule"] == "derived"]
    assert sum(e["count"] for e in counted) == len(derived) > 0
    expected = derived.groupby(["DTYPE", "TRT01P", "AVISIT"]).size()
    assert {(e["value"], e["arm"], e["visit"]): e["count"] for e in counted} == expected.to_dict()
    texts = [c["text"] for c in changes_of(with_locf)]
    assert any("derived by imputation (DTYPE = LOCF) excluded" in t for t in texts)
    assert not any("DTYPE" in t for t in (c["text"] for c in changes_of(plain)))


def test_population_flag_and_anl01fl_choose_the_records(tmp_path, small):
    folder, tables, _ = small
    ds, _ = load_adam(options(altered(tmp_path, small)))
    texts = " ".join(c["text"] for c in changes_of(ds))
    assert "2 subject(s) without ITTFL = 'Y' not analysed (Screen Failure 2)" in texts
    unscheduled = int((tables["adqs"]["AVISIT"] == "Unscheduled").sum())
    assert unscheduled and f"{unscheduled} outcome record(s) without ANL01FL = 'Y'" in texts
    # FASFL leaves out two participants: they are not analysed, and said so
    def fas(t):
        t["adsl"].loc[[0, 1], "FASFL"] = "N"
    ds2, _ = load_adam(options(altered(tmp_path / "fas", small, fas), population_flag="FASFL"))
    assert ds2.sizes["participant"] == ds.sizes["participant"] - 2
    assert "4 subject(s) without FASFL = 'Y' not analysed" in " ".join(c["text"] for c in changes_of(ds2))


def test_intercurrent_events_come_from_the_adsl(tmp_path, small):
    folder, tables, _ = small
    strategy = parse_ice_strategy("ADVERSE EVENT=J2R,Lack of efficacy=CIR,*=MAR")
    ds, ice = load_adam(options(altered(tmp_path / "a", small), ice_strategy=strategy))
    weeks = [int(w) for w in ds["week"].values]
    adsl = tables["adsl"].set_index("SUBJID")
    last = {str(p): weeks[np.flatnonzero(np.isfinite(r))[-1]] for p, r in zip(ds["participant"].values, ds["score"].values)}
    stopped = [p for p in last if last[p] < 12]
    assert sorted(ice.participant_id) == sorted(stopped) and len(stopped) > 3
    for p, w, s in zip(ice.participant_id, ice.week, ice.strategy):
        assert w == weeks[weeks.index(last[p]) + 1]  # the first scheduled visit after the last dose
        assert s == {"ADVERSE EVENT": "J2R", "LACK OF EFFICACY": "CIR"}.get(adsl.loc[p, "DCTREAS"], "MAR")
    assert ice.source == "adsl.xpt (EOTSTT, DCTREAS)"
    # without ADT the target days of the schedule give the same weeks; a reason the map does not name gives no event
    no_adt = altered(tmp_path / "b", small, lambda t: t.update(adqs=t["adqs"].drop(columns="ADT")))
    _, ice2 = load_adam(options(no_adt, ice_strategy={"adverse event": "J2R"}))
    assert set(ice2.participant_id) == {p for p in stopped if adsl.loc[p, "DCTREAS"] == "ADVERSE EVENT"}
    assert all(dict(zip(ice.participant_id, ice.week))[p] == w for p, w in zip(ice2.participant_id, ice2.week))
    text = [c["text"] for c in json.loads(load_adam(options(no_adt, ice_strategy={"adverse event": "J2R"}))[0].attrs["changes"])
            if "discontinued treatment" in c["text"]][0]
    assert "with a reason the strategy map does not name" in text


def test_base_disagreeing_with_the_baseline_is_reported_not_refused(tmp_path, small):
    def shift(t):
        q = t["adqs"]
        seen = q.loc[(q["AVISIT"] == "Week 12") & (q["DTYPE"] == ""), "USUBJID"].iloc[0]
        q.loc[q["USUBJID"] == seen, "BASE"] += 1
    ds, _ = load_adam(options(altered(tmp_path, small, shift)))
    same_trial(load_dataset(small[0]), ds)
    assert any(c["action"] == "base_differs" and "BASE differs from the baseline record's AVAL" in c["text"] for c in changes_of(ds))


def test_below_lloq_from_the_flag_or_the_limit(tmp_path, small):
    folder, tables, _ = small
    expected = load_dataset(folder)
    assert expected["below_lod"].values.any()
    flag_only = altered(tmp_path / "a", small, lambda t: t.update(adlb=t["adlb"].drop(columns="LLOQ")))
    ds, _ = load_adam(options(flag_only))
    assert np.array_equal(ds["below_lod"].values, expected["below_lod"].values)
    assert np.array_equal(ds["marker_value"].values, expected["marker_value"].values, equal_nan=True)
    assert json.loads(ds.attrs["meta"])["detection_limits"] == {}  # no LLOQ: each censored value carries its limit
    limit_only = altered(tmp_path / "b", small, lambda t: t.update(adlb=t["adlb"].drop(columns="AVALC")))
    ds, _ = load_adam(options(limit_only))
    assert np.array_equal(ds["below_lod"].values, expected["below_lod"].values)
    assert json.loads(ds.attrs["meta"])["detection_limits"] == {"il6": 0.7}


# ---------------------------------------------------------------- refusals (the checks, and more)


def test_missing_paramcd_variable_is_refused(tmp_path, small):
    bad = altered(tmp_path, small, lambda t: t.update(adqs=t["adqs"].drop(columns="PARAMCD")))
    refused(options(bad), "adqs.xpt, column 'PARAMCD'", "has no variable PARAMCD", "--adam-var paramcd=")


def test_paramcd_not_present_is_refused_listing_those_present(tmp_path, small):
    refused(options(altered(tmp_path, small), param="HAMD17"), "has no records of PARAMCD 'HAMD17'", "MADRS (MADRS Total Score)",
            "--param")
    refused(options(altered(tmp_path / "b", small), param="madrs"), "Probably 'MADRS'")


def test_duplicate_analysed_records_are_refused_naming_subjects_and_records(tmp_path, small):
    def twice(t):
        q = t["adqs"]
        row = q[(q["AVISIT"] == "Week 4") & (q["DTYPE"] == "")].iloc[[0]].assign(AVAL=lambda d: d["AVAL"] + 1)
        t["adqs"] = pd.concat([q, row], ignore_index=True)
    text = refused(options(altered(tmp_path, small, twice)), "several analysed records for one participant and visit", "week 4",
                   "SMALL-P", "records ")
    assert "ANL01FL" in text


def test_an_arm_with_no_participants_after_the_flags_is_refused(tmp_path, small):
    def no_nac(t):
        t["adsl"].loc[t["adsl"]["TRT01P"] == "nac", "ITTFL"] = "N"
    refused(options(altered(tmp_path, small, no_nac)), "adsl.xpt, column 'TRT01P'", "TRT01P 'nac' has 0 participant(s) with ITTFL = 'Y'",
            "--population-flag")


def test_a_participant_without_baseline_is_refused(tmp_path, small):
    def drop(t):
        q = t["adqs"]
        t["adqs"] = q[~((q["USUBJID"] == "SMALL-P0003") & (q["ABLFL"] == "Y"))]
    refused(options(altered(tmp_path, small, drop)), "1 analysed participant(s) have no baseline record (ABLFL = 'Y'", "SMALL-P0003")


def test_a_visit_mapping_to_no_week_is_refused_and_a_visit_map_fixes_it(tmp_path, small):
    def flagged(t):
        t["adqs"].loc[t["adqs"]["AVISIT"] == "Unscheduled", "ANL01FL"] = "Y"
    refused(options(altered(tmp_path / "a", small, flagged)), "AVISIT value(s) 'Unscheduled'", "map to no week", "--visit-map",
            "ANL01FL = 'Y' only on the records of scheduled visits")

    def renamed(t):
        for name in ("adqs", "adlb"):
            t[name]["AVISIT"] = t[name]["AVISIT"].map(lambda v: {"Baseline": "Visit 1", "Week 12": "Visit 6"}.get(v, v))
    bad = altered(tmp_path / "b", small, renamed)
    refused(options(bad), "'Visit 6'", "map to no week")  # 'Visit 1' is the ABLFL record: week 0 whatever its label
    ds, _ = load_adam(options(bad, visit_map=parse_visit_map("Visit 6=12")))
    same_trial(load_dataset(small[0]), ds)


@pytest.mark.parametrize("content, words", [
    (b"not a transport file at all" * 40, ("adqs.xpt: the BDS dataset could not be read as a SAS transport file", "export it again")),
    (b"", ("adqs.xpt: the BDS dataset could not be read",)),
])
def test_an_unreadable_file_is_refused_naming_it(tmp_path, small, content, words):
    bad = altered(tmp_path, small)
    (bad / "adqs.xpt").write_bytes(content)
    refused(options(bad), *words)


def test_missing_and_unknown_files_are_refused(tmp_path, small):
    bad = altered(tmp_path, small)
    refused(AdamOptions(bad / "adsl.xpt", bad / "nothere.xpt"), "nothere.xpt: the BDS dataset does not exist")
    (bad / "adqs.xlsx").write_bytes(b"PK\x03\x04")
    refused(AdamOptions(bad / "adsl.xpt", bad / "adqs.xlsx"), "adqs.xlsx: the BDS dataset is not a kind of file",
            ".xpt, .sas7bdat, .csv, .parquet")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, small, monkeypatch):
    import sys

    folder, tables, config = small
    out = write(tmp_path / "parquet", tables, config, "parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    refused(AdamOptions(out / "adsl.parquet", out / "adqs.parquet"), "adsl.parquet: is a Parquet file", "pip install pyarrow")


def test_other_refusals_name_the_fix(tmp_path, small):
    folder, tables, config = small
    plain = altered(tmp_path / "plain", small)
    refused(options(plain, population_flag="EFFFL"), "has no population flag EFFFL", "ITTFL", "--population-flag")
    refused(options(plain, reference="Placebo"), "the reference arm 'Placebo' is not an analysed value", "Probably 'placebo'")
    unknown = altered(tmp_path / "scale", small, lambda t: t.update(adqs=t["adqs"].assign(PARAMCD="XYZ", PARAM="XYZ score")))
    refused(options(unknown, param="XYZ"), "PARAMCD 'XYZ' (XYZ score) is not a scale the reader knows", "--scale MIN:MAX")
    ds, _ = load_adam(options(unknown, param="XYZ", scale=(0, 60)))
    assert json.loads(ds.attrs["meta"])["outcome"] == "xyz"
    def control(t):
        t["adsl"]["TRT01P"] = t["adsl"]["TRT01P"].replace("placebo", "control")
    no_placebo = altered(tmp_path / "ref", small, control, lambda c: c.replace('reference = "placebo"\n', ""))
    refused(options(no_placebo), "the control arm is not known: no arm's name contains 'placebo'", "['nac', 'control']", "--reference")
    ds, _ = load_adam(options(no_placebo, reference="control"))
    assert json.loads(ds.attrs["meta"])["control_arm"] == "control"
    twice = altered(tmp_path / "dup", small, lambda t: t.update(adsl=pd.concat([t["adsl"], t["adsl"].iloc[[0]]], ignore_index=True)))
    refused(options(twice), "has several records for subject(s) ['SMALL-P0001']", "one record per subject")
    high = altered(tmp_path / "range", small, lambda t: t["adqs"].__setitem__("AVAL", t["adqs"]["AVAL"] * 3))
    refused(options(high), "AVAL outside the MADRS range 0-60", "--scale")
    ds, _ = load_adam(options(high, scale=(0, 180)))
    assert json.loads(ds.attrs["meta"])["score_max"] == 180


def test_the_adam_table_is_read_and_options_win(tmp_path, small):
    folder = altered(tmp_path / "a", small, config_change=lambda c: c.replace("[adam]\n", "[adam]\npopulation_flag = \"FASFL\"\n"))
    trial = read_adam(options(folder))
    assert trial.options.flag == "FASFL" and trial.options.marker_params == ("IL6", "CRP", "BDNF")
    assert trial.options.config == folder / META_FILE
    assert read_adam(options(folder, population_flag="ITTFL")).options.flag == "ITTFL"
    assert read_adam(options(folder, variables={"site": "SITEID"})).options.variables == {"participant_id": "SUBJID", "site": "SITEID"}
    typo = altered(tmp_path / "b", small, config_change=lambda c: c.replace("[adam]\n", "[adam]\nparamcd = \"MADRS\"\n"))
    refused(options(typo), "dataset.toml, column '[adam] paramcd', line 4", "unknown key(s) ['paramcd'] in [adam]")
    bad = altered(tmp_path / "c", small, config_change=lambda c: c.replace("[adam]\n", "[adam]\nscale = [60, 0]\n"))
    refused(options(bad), "[adam] scale", "MIN must be below its MAX")


# ---------------------------------------------------------------- scales and visits


@pytest.mark.parametrize("texts, expected", [
    (("MADRS",), "madrs"), (("MADRSTOT",), "madrs"), (("HAMD17",), "hamd"), (("X", "HAM-D 17 Total Score"), "hamd"),
    (("HAMD",), "hamd"), (("BDI-II",), "bdi"), (("BDITOT",), "bdi"), (("PHQ9",), "phq9"), (("QIDS-SR16",), "qids"),
    (("CGI-S",), "cgis"), (("CGISEV",), "cgis"), (("HAMD21",), None), (("CGI-I",), None), (("ADAS-COG",), None),
])
def test_known_scales_are_recognised(texts, expected):
    found = recognise_scale(*texts)
    assert (found[0] if found else None) == expected
    ranges = {"madrs": (0, 60), "hamd": (0, 52), "bdi": (0, 63), "phq9": (0, 27), "qids": (0, 27), "cgis": (1, 7)}
    if found:
        assert found[2:] == ranges[expected]


@pytest.mark.parametrize("label, week", [("Baseline", 0), ("BASELINE", 0), ("Week 6", 6), ("WEEK 16 (Follow-up)", 16), ("Wk 2", 2),
                                         ("Day 1", 0), ("Day 15", 2), ("Day 10", None), ("Screening", None), ("Unscheduled 4.1", None),
                                         ("Endpoint", None), ("Week -1", None)])
def test_visit_labels_give_weeks(label, week):
    got = parse_visit(label)
    assert (None if np.isnan(got) else got) == week


def test_hamd_trial_with_site_groups_and_categorical_codes(tmp_path, small):
    """A HAM-D 17 trial as another sponsor writes it: PARAMCD HAMD17, sites pooled in SITEGR1, no SITEID, a numeric race code
    declared categorical, arms named Placebo and 'Drug X 10 mg'."""
    def sponsor(t):
        adsl, adqs = t["adsl"], t["adqs"]
        adsl["SITEGR1"] = adsl.pop("SITEID").str[:3].str.upper()
        adsl["RACEN"] = (np.arange(len(adsl)) % 3 + 1).astype(float)
        adsl["TRT01P"] = adsl["TRT01P"].replace({"placebo": "Placebo", "nac": "Drug X 10 mg"})
        adqs["PARAMCD"], adqs["PARAM"] = "HAMD17", "HAM-D 17 Total"
        adqs["AVAL"] = np.minimum(adqs["AVAL"], 52)
        t.pop("adlb")
    folder = altered(tmp_path, small, sponsor, lambda c: c.replace('markers = ["IL6", "CRP", "BDNF"]\nmarkers_file = "adlb.xpt"\n', "")
                     .replace('param = "MADRS"', 'param = "HAMD17"').replace('reference = "placebo"\n', ""))
    ds, _ = load_adam(options(folder, covariates=("AGE", "RACEN:categorical")))
    meta = json.loads(ds.attrs["meta"])
    assert (meta["outcome"], meta["outcome_label"], meta["score_max"]) == ("hamd", "HAM-D 17", 52)
    assert (meta["control_arm"], meta["treatment_arms"]) == ("Placebo", ["Drug X 10 mg"])
    assert meta["covariates"] == {"age": "continuous", "racen": "categorical"}
    assert set(ds["site"].values) <= {"BAR", "MEL", "SYD", "BRI"}
    assert set(ds["covariate_racen"].values) == {"1", "2", "3"}
    from diagnostics.contrasts import parse_contrast  # a label with spaces is an arm of a contrast

    assert dict(parse_contrast("Drug X 10 mg - Placebo", ["Placebo", "Drug X 10 mg"]).weights) == {"Placebo": -1.0, "Drug X 10 mg": 1.0}
