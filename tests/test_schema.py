"""The data interface: good datasets load; each kind of bad dataset gets its specific message."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from data import DEFAULT_DATASET, DatasetError, changes_of, load_dataset, parse_meta

pytestmark = pytest.mark.unit


@pytest.fixture
def trial_copy(tmp_path):
    dst = tmp_path / "trial"
    shutil.copytree(DEFAULT_DATASET, dst)
    return dst


def edit_csv(folder, name, fn):
    path = folder / name
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = fn(df)
    df.to_csv(path, index=False)


def expect_error(folder, *fragments):
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    text = str(info.value)
    for frag in fragments:
        assert frag in text, f"{frag!r} not in error:\n{text}"
    return text


def test_default_dataset_loads_with_named_dims():
    ds = load_dataset(DEFAULT_DATASET)
    assert set(ds.sizes) == {"participant", "week", "marker", "biomarker_week"}
    assert ds.sizes["participant"] == 252
    assert list(ds["week"].values) == [0, 2, 4, 6, 8, 12, 16]
    assert list(ds["marker"].values) == ["il6", "crp", "bdnf"]
    assert not np.isnan(ds["score"].sel(week=0)).any(), "every participant has a baseline"
    assert ds["below_lod"].sum() > 0
    visits = pd.read_csv(DEFAULT_DATASET / "visits.csv")
    assert int((~np.isnan(ds["score"].values)).sum()) == len(visits), "no visit row is lost"
    assert len(ds.attrs["checksum"]) == 64


def test_unknown_arm(trial_copy):
    edit_csv(trial_copy, "participants.csv", lambda d: d.assign(arm=d["arm"].where(d.index != 4, "NAC")))
    expect_error(trial_copy, "participants.csv", "column 'arm'", "line 6", "unknown arm ['NAC']")


def _three_arm(folder, arms_table: str):
    toml = (folder / "dataset.toml").read_text()
    start, end = toml.index("[arms]"), toml.index("[schedule]")
    (folder / "dataset.toml").write_text(toml[:start] + arms_table + "\n" + toml[end:])


def test_a_three_arm_dataset_loads_with_its_arm_index(trial_copy):
    edit_csv(trial_copy, "participants.csv", lambda d: d.assign(arm=np.where(d.index % 3 == 2, "high", d["arm"].where(d["arm"] != "nac", "low"))))
    _three_arm(trial_copy, '[arms]\ncontrol = "placebo"\ntreatment = ["low", "high"]\n\n[arms.dose]\nplacebo = 0\nlow = 50\nhigh = 100\n')
    ds = load_dataset(trial_copy)
    meta = __import__("data").meta_of(ds)
    assert meta.arms == ("placebo", "low", "high") and meta.doses == {"placebo": 0.0, "low": 50.0, "high": 100.0}
    assert [meta.arms[i] for i in ds["arm_index"].values] == list(ds["arm"].values)
    with pytest.raises(ValueError, match="2 active arms"):
        meta.treatment_arm  # noqa: B018 -- a statement about 'the' active arm must name it


def test_an_arm_in_the_data_that_dataset_toml_does_not_declare(trial_copy):
    edit_csv(trial_copy, "participants.csv", lambda d: d.assign(arm=d["arm"].where(d.index != 7, "high")))
    expect_error(trial_copy, "participants.csv", "column 'arm'", "line 9", "unknown arm ['high']", "treatment 'nac'")


def test_a_declared_arm_without_participants(trial_copy):
    _three_arm(trial_copy, '[arms]\ncontrol = "placebo"\ntreatment = ["nac", "high"]\n')
    expect_error(trial_copy, "participants.csv", "arm 'high'", "0 participant(s)", "remove 'high' from [arms]")


@pytest.mark.parametrize("table, message", [
    ('[arms]\ncontrol = "placebo"\ntreatment = ["nac", "nac"]\n', "lists ['nac'] more than once"),
    ('[arms]\ncontrol = "placebo"\ntreatment = ["nac", "placebo"]\n', "both the control and a treatment arm"),
    ('[arms]\ncontrol = "placebo"\ntreatment = []\n', "an arm label or a list of labels"),
    ('[arms]\ncontrol = "placebo"\ntreatment = "nac"\n\n[arms.dose]\nplacebo = 0\n', "arms without a dose: ['nac']"),
    ('[arms]\ncontrol = "placebo"\ntreatment = "nac"\n\n[arms.dose]\nplacebo = 0\nnac = "high"\n', "not numbers: ['nac']"),
    ('[arms]\ncontrol = "placebo"\ntreatment = "nac"\n\n[arms.dose]\nplacebo = 0\nnac = 1\nlow = 2\n', "not declared under [arms]: ['low']"),
])
def test_bad_arm_declarations_are_refused(trial_copy, table, message):
    _three_arm(trial_copy, table)
    expect_error(trial_copy, "dataset.toml", message)


def test_duplicate_participant_week(trial_copy):
    # an exact duplicate is removed and reported (tests/test_corpus.py); a conflicting one is an error
    edit_csv(trial_copy, "visits.csv", lambda d: pd.concat([d, d.iloc[[3]].assign(madrs="59")], ignore_index=True))
    text = expect_error(trial_copy, "visits.csv", "more than one row for the same participant, week")
    assert f"line {3 + 2}" in text or "lines 5" in text


def test_score_out_of_range(trial_copy):
    edit_csv(trial_copy, "visits.csv", lambda d: d.assign(madrs=d["madrs"].where(d.index != 10, "61")))
    expect_error(trial_copy, "visits.csv", "column 'madrs'", "line 12", "outside its valid range 0-60")


def test_non_integer_score(trial_copy):
    edit_csv(trial_copy, "visits.csv", lambda d: d.assign(madrs=d["madrs"].where(d.index != 2, "20.5")))
    expect_error(trial_copy, "visits.csv", "line 4", "integer scale")


def test_non_numeric_biomarker(trial_copy):
    edit_csv(trial_copy, "biomarkers.csv", lambda d: d.assign(value=d["value"].where(d.index != 0, "1,5")))
    expect_error(trial_copy, "biomarkers.csv", "column 'value'", "line 2", "not a number")


def test_non_positive_biomarker(trial_copy):
    edit_csv(trial_copy, "biomarkers.csv", lambda d: d.assign(value=d["value"].where(d.index != 7, "0")))
    expect_error(trial_copy, "biomarkers.csv", "line 9", "must be positive")


def test_visit_for_unknown_participant(trial_copy):
    def add(d):
        row = d.iloc[[0]].assign(participant_id="X999")
        return pd.concat([d, row], ignore_index=True)

    edit_csv(trial_copy, "visits.csv", add)
    expect_error(trial_copy, "visits.csv", "participant_id not in participants.csv", "X999")


def test_no_baseline(trial_copy):
    edit_csv(trial_copy, "visits.csv", lambda d: d[~((d["participant_id"] == "P0003") & (d["week"] == "0"))])
    expect_error(trial_copy, "visits.csv", "no baseline (week 0) score", "P0003")


def test_unscheduled_week(trial_copy):
    edit_csv(trial_copy, "visits.csv", lambda d: d.assign(week=d["week"].where(d.index != 1, "3")))
    expect_error(trial_copy, "visits.csv", "column 'week'", "line 3", "week [3] is not one of the scheduled visit weeks")


def test_missing_column_and_semicolon_hint(trial_copy):
    text = (trial_copy / "participants.csv").read_text().replace(",", ";")
    (trial_copy / "participants.csv").write_text(text)
    expect_error(trial_copy, "participants.csv", "line 1", "separated by ';'", "decimal mark")


def test_missing_file(trial_copy):
    (trial_copy / "visits.csv").unlink()
    expect_error(trial_copy, "visits.csv: is missing")


def test_duplicate_participant(trial_copy):
    edit_csv(trial_copy, "participants.csv", lambda d: pd.concat([d, d.iloc[[0]].assign(site="other")], ignore_index=True))
    expect_error(trial_copy, "participant_id must be unique", "P0001")


def test_unknown_marker_and_unit_mismatch(trial_copy):
    edit_csv(trial_copy, "biomarkers.csv", lambda d: d.assign(marker=d["marker"].where(d.index != 0, "tnf")))
    expect_error(trial_copy, "unknown marker ['tnf']")


def test_unit_disagreeing_with_metadata(trial_copy):
    edit_csv(trial_copy, "biomarkers.csv", lambda d: d.assign(unit=d["marker"].map({"il6": "pg/mL", "crp": "mg/dL", "bdnf": "ng/mL"})))
    expect_error(trial_copy, "column 'unit'", "('crp', 'mg/dL')")


def test_malformed_toml(trial_copy):
    (trial_copy / "dataset.toml").write_text("[outcome\nname = madrs\n")
    expect_error(trial_copy, "dataset.toml", "not valid TOML")


def test_errors_are_collected_not_first_only(trial_copy):
    def two(d):
        d = d.assign(madrs=d["madrs"].where(d.index != 10, "99"))
        return d.assign(week=d["week"].where(d.index != 20, "5"))

    edit_csv(trial_copy, "visits.csv", two)
    text = expect_error(trial_copy, "2 problems")
    assert "valid range" in text and "scheduled visit weeks" in text


def test_no_biomarkers_file_is_allowed(trial_copy):
    (trial_copy / "biomarkers.csv").unlink()
    ds = load_dataset(trial_copy)
    assert "marker_value" not in ds and ds.attrs["has_biomarkers"] == 0


def test_below_lod_blank_value_takes_declared_limit(trial_copy):
    def censor(d):
        i = d.index[d["marker"] == "il6"][0]
        d.loc[i, "value"] = ""
        d.loc[i, "below_lod"] = "1"
        return d

    edit_csv(trial_copy, "biomarkers.csv", censor)
    ds = load_dataset(trial_copy)
    assert np.nanmin(ds["marker_value"].sel(marker="il6").where(ds["below_lod"].sel(marker="il6")).values) == pytest.approx(0.7)


@pytest.mark.parametrize("scale,lo,hi", [("hamd", 0, 52), ("bdi", 0, 63)])
def test_other_scales(tmp_path, scale, lo, hi):
    from data import TrialParameters, simulate_trial

    p = TrialParameters(outcome=scale, outcome_label=scale.upper(), score_max=hi, n_participants=40, seed=3, weeks=(0, 1, 2, 4, 6, 8), treatment_end=8)
    simulate_trial(p).write(tmp_path / scale)
    ds = load_dataset(tmp_path / scale)
    assert ds.attrs["outcome"] == scale
    assert list(ds["week"].values) == [0, 1, 2, 4, 6, 8]
    assert np.nanmax(ds["score"].values) <= hi


def test_meta_rejects_bad_schedule():
    with pytest.raises(DatasetError, match="must start with the baseline week 0"):
        parse_meta("[schedule]\nweeks = [2, 4]\ntreatment_end = 4\n")
    with pytest.raises(DatasetError, match="treatment_end must be one of the scheduled weeks"):
        parse_meta("[schedule]\nweeks = [0, 4, 8]\ntreatment_end = 6\n")
    with pytest.raises(DatasetError, match="valid range must be given"):
        parse_meta('[outcome]\nname = "qids"\n')


def test_header_only_biomarkers_file_means_no_biomarker_data_and_says_so(trial_copy):
    """Declared markers with a biomarkers.csv holding only its header: loaded without biomarkers, the change
    reported, and the models that need biomarkers refused with the reason (the property tests generate this case)."""
    from models import ModelDataError, build_design, get

    (trial_copy / "biomarkers.csv").write_text("participant_id,week,marker,value,below_lod\n")
    ds = load_dataset(trial_copy)
    assert "marker_value" not in ds and ds.attrs["has_biomarkers"] == 0
    assert [c["action"] for c in changes_of(ds)] == ["no_biomarker_rows"]
    design = build_design(ds)
    get("treatment").require(design)
    with pytest.raises(ModelDataError, match="needs baseline biomarkers"):
        get("headline").require(design)


# ---------------------------------------------------------------- baseline covariates ([covariates] of dataset.toml)


def declare(folder, lines: str) -> None:
    with open(folder / "dataset.toml", "a", encoding="utf-8") as out:
        out.write("\n[covariates]\n" + lines)


def test_declared_covariates_load_validated(trial_copy):
    """Declared covariates are kept as validated values (numbers, labels), their kinds in the metadata, and the
    metadata round-trips through to_toml; an undeclared column stays in the data, unused."""
    from data import meta_of

    declare(trial_copy, 'age = "continuous"\nsex = "categorical"\n')
    ds = load_dataset(trial_copy)
    meta = meta_of(ds)
    assert meta.covariates == {"age": "continuous", "sex": "categorical"}
    assert ds["covariate_age"].dtype == float and set(ds["covariate_sex"].values) == {"F", "M"}
    assert parse_meta(meta.to_toml()) == meta


def test_covariate_table_rules():
    """A kind other than continuous/categorical, a reserved column, a table that is not one: refused with the line."""
    with pytest.raises(DatasetError, match=r"dataset.toml, column '\[covariates\]', line 3: covariate 'sex' has kind 'factor'.*Fix:"):
        parse_meta('[covariates]\nage = "continuous"\nsex = "factor"\n')
    with pytest.raises(DatasetError, match="'site' cannot be a covariate"):
        parse_meta('[covariates]\nsite = "categorical"\n')
    with pytest.raises(DatasetError, match=r"\[covariates\] must be a table"):
        parse_meta('covariates = ["age"]\n')


def test_covariate_not_a_column(trial_copy):
    declare(trial_copy, 'Age = "continuous"\n')
    expect_error(trial_copy, "participants.csv, column 'Age', line 1", "covariate 'Age' is declared in [covariates] of dataset.toml",
                 "Probably 'age'", "Fix: add the column 'Age'")


def test_missing_covariate_values(trial_copy):
    """Empty and NA cells are missing values, an error for a declared covariate, with their lines; a withdrawn
    participant's missing value does not count; an undeclared column may have gaps."""
    def gaps(d):
        d.loc[3, "age"] = ""
        d.loc[8, "age"] = "NA"
        d.loc[5, "sex"] = ""
        d["withdrew_consent"] = "0"
        d.loc[12, ["age", "withdrew_consent"]] = ["", "1"]
        return d

    edit_csv(trial_copy, "participants.csv", gaps)
    declare(trial_copy, 'age = "continuous"\n')
    text = expect_error(trial_copy, "participants.csv, column 'age', lines 5, 10:", "missing for 2 participant(s)",
                        "Fix: fill in the values, or remove 'age' from [covariates]")
    assert "sex" not in text


def test_continuous_covariate_not_a_number(trial_copy):
    edit_csv(trial_copy, "participants.csv", lambda d: d.assign(age=d["age"].where(d.index != 6, "48,5")))
    declare(trial_copy, 'age = "continuous"\n')
    expect_error(trial_copy, "column 'age', line 8", "declared continuous but is not a number (e.g. ['48,5'])", "decimal comma")
    edit_csv(trial_copy, "participants.csv", lambda d: d.assign(age="young"))
    expect_error(trial_copy, "not a number (e.g. ['young'])", 'declare it age = "categorical"')


def test_covariate_that_adjusts_for_nothing(trial_copy):
    """A categorical covariate with one level, a continuous one without variation, levels differing only in case."""
    edit_csv(trial_copy, "participants.csv", lambda d: d.assign(sex="F", age="50"))
    declare(trial_copy, 'age = "continuous"\nsex = "categorical"\n')
    text = expect_error(trial_copy, "2 problems", "categorical covariate 'sex' has one level ('F')",
                        "same value (50) for every participant")
    assert "column 'sex', lines 2, 3" in text
    edit_csv(trial_copy, "participants.csv", lambda d: d.assign(sex=np.where(d.index % 2, "f", "F"), age=d.index.astype(str)))
    expect_error(trial_copy, "column 'sex'", "differ only in upper/lower case ['F', 'f']")
