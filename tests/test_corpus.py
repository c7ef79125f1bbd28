"""A corpus of malformed and awkward datasets, each with the exact message (or change) it must give.

Cases are made by small corruptions of a copy of the bundled default dataset, plus the literal
files in tests/corpus/ (real-export shapes: semicolons and decimal commas, Latin-1, UTF-16, a
hand-broken dataset.toml). Three kinds:

- ERRORS: rejected with a DatasetError naming the file (and column and CSV lines where there are
  some) and a fix; through `fit.main` they exit with code 2 and write nothing.
- SAME: accepted and loaded identically to the original (BOM, CRLF, reordered columns, ...).
- CHANGED: accepted but altered; every alteration is listed in the load's changes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import fit
from data import DEFAULT_DATASET, DatasetError, changes_of, load_dataset
from deptrial import orchestrate

pytestmark = pytest.mark.unit

LITERAL = Path(__file__).parent / "corpus"


# ---------------------------------------------------------------- corruption helpers
def csv_edit(file: str, fn: Callable[[pd.DataFrame], pd.DataFrame]):
    def run(folder: Path):
        path = folder / file
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        fn(df).to_csv(path, index=False, lineterminator="\n")

    return run


def cell(file: str, column: str, row: int, value: str):
    """Set one cell; row is the 0-based data row, so its CSV line is row + 2."""

    def fn(df):
        df = df.copy()
        df.loc[row, column] = value
        return df

    return csv_edit(file, fn)


def text_edit(file: str, fn: Callable[[str], str]):
    def run(folder: Path):
        path = folder / file
        path.write_bytes(fn(path.read_bytes().decode("utf-8")).encode("utf-8"))

    return run


def write_bytes(file: str, payload: bytes):
    def run(folder: Path):
        (folder / file).write_bytes(payload)

    return run


def literal(src: str, dst: str):
    def run(folder: Path):
        shutil.copyfile(LITERAL / src, folder / dst)

    return run


def remove(file: str):
    def run(folder: Path):
        path = folder / file
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return run


def toml_edit(old: str, new: str):
    def fn(text):
        assert old in text, old
        return text.replace(old, new, 1)

    return text_edit("dataset.toml", fn)


def chain(*steps):
    def run(folder: Path):
        for step in steps:
            step(folder)

    return run


def drop_rows(file: str, pred):
    return csv_edit(file, lambda d: d[~pred(d)].reset_index(drop=True))


def append_rows(file: str, make):
    return csv_edit(file, lambda d: pd.concat([d, make(d)], ignore_index=True))


def first_row(file: str, **match) -> int:
    df = pd.read_csv(DEFAULT_DATASET / file, dtype=str, keep_default_na=False)
    mask = np.ones(len(df), dtype=bool)
    for k, v in match.items():
        mask &= (df[k] == v).to_numpy()
    return int(np.flatnonzero(mask)[0])


def line(row: int) -> str:
    return f"line {row + 2}"


@dataclass
class Case:
    name: str
    mutate: Callable[[Path], None]
    fragments: tuple[str, ...]
    limit: int | None = None  # size guard for this case (bytes)
    folder: Callable[[Path], Path] | None = None  # the --data path, when it is not the dataset copy
    changes: tuple[str, ...] = field(default=())  # for CHANGED cases: the change actions expected


# rows used below (looked up, not assumed)
P1_W12 = first_row("visits.csv", participant_id="P0001", week="12")
P3_W0 = first_row("visits.csv", participant_id="P0003", week="0")
CRP_ROW = first_row("biomarkers.csv", marker="crp")
IL6_ROW = first_row("biomarkers.csv", marker="il6")
NAC_IDS = pd.read_csv(DEFAULT_DATASET / "participants.csv", dtype=str).query("arm == 'nac'")["participant_id"].tolist()

ERRORS = [
    # files and folders
    Case("missing_toml", remove("dataset.toml"), ("dataset.toml: is missing", "Fix:")),
    Case("missing_participants", remove("participants.csv"), ("participants.csv: is missing",)),
    Case("missing_visits", remove("visits.csv"), ("visits.csv: is missing",)),
    Case("data_folder_absent", lambda f: None, ("does not exist",), folder=lambda f: f.parent / "no_such_trial"),
    Case("data_path_is_file", lambda f: None, ("is not a folder",), folder=lambda f: f / "visits.csv"),
    Case("participants_is_folder", chain(remove("participants.csv"), lambda f: (f / "participants.csv").mkdir()),
         ("participants.csv: is not a regular file",)),
    Case("empty_file", write_bytes("participants.csv", b""), ("participants.csv: is empty",)),
    Case("bom_only_file", write_bytes("visits.csv", b"\xef\xbb\xbf\r\n"), ("visits.csv: is empty",)),
    Case("header_only", write_bytes("visits.csv", b"participant_id,week,madrs\n"), ("visits.csv: has a header but no data rows",)),
    Case("huge_file", lambda f: None, ("visits.csv: is ", "bytes, above the loader's size limit of 12000 bytes", "DEPTRIAL_MAX_FILE_BYTES"), limit=12_000),
    # encodings and binary
    Case("latin1", literal("latin1_participants.csv", "participants.csv"), ("participants.csv, line 3: is not UTF-8", "0xe9", "iconv")),
    Case("utf16", literal("utf16_visits.csv", "visits.csv"), ("visits.csv: is UTF-16",)),
    Case("xlsx_renamed", write_bytes("visits.csv", b"PK\x03\x04\x14\x00\x06\x00rest-of-a-workbook"), ("visits.csv: is a zip archive", "CSV UTF-8")),
    Case("nul_bytes", text_edit("visits.csv", lambda t: t.replace("P0002", "P00\x002", 1)), ("visits.csv", "NUL bytes")),
    Case("toml_not_utf8", write_bytes("dataset.toml", 'title = "Essai clinique à Montréal"\n'.encode("latin-1")), ("dataset.toml, line 1: is not UTF-8",)),
    # separators, fields, quoting
    Case("semicolon_export", literal("semicolon_biomarkers.csv", "biomarkers.csv"), ("biomarkers.csv, line 1: is separated by ';'", "decimal mark")),
    Case("tab_export", text_edit("participants.csv", lambda t: t.replace(",", "\t")), ("participants.csv, line 1: is separated by tabs",)),
    Case("unquoted_decimal_comma", literal("decimal_comma_biomarkers.csv", "biomarkers.csv"),
         ("biomarkers.csv, lines 2, 3: row has more fields than the 5 header columns", "decimal comma")),
    Case("quoted_decimal_comma", cell("biomarkers.csv", "value", 0, "1,5"), ("biomarkers.csv, column 'value', line 2", "not a number", "decimal comma")),
    Case("short_row", text_edit("visits.csv", lambda t: t.replace("\nP0001,2,18\n", "\nP0001,2\n", 1)), ("visits.csv, line 3: row has fewer fields",)),
    Case("unbalanced_quote", text_edit("visits.csv", lambda t: t.replace("\nP0001,2,18\n", '\nP0001,2,"18\n', 1)), ("visits.csv", "could not be parsed as CSV", "quote")),
    # columns
    Case("misnamed_id_column", text_edit("participants.csv", lambda t: t.replace("participant_id", "Participant ID", 1)),
         ("participants.csv, line 1: is missing required column(s) ['participant_id']", "'Participant ID' should be named 'participant_id'")),
    Case("score_column_upper", text_edit("visits.csv", lambda t: t.replace("madrs", "MADRS", 1)), ("missing required column(s) ['madrs']", "'MADRS' should be named 'madrs'")),
    Case("missing_arm_column", csv_edit("participants.csv", lambda d: d.drop(columns="arm")), ("participants.csv, line 1: is missing required column(s) ['arm']",)),
    Case("duplicate_column", text_edit("visits.csv", lambda t: t.replace("participant_id,week,madrs", "participant_id,week,week", 1)), ("duplicated column name(s) ['week']",)),
    Case("unnamed_column", text_edit("participants.csv", lambda t: t.replace("age,sex", ",sex", 1)), ("header column(s) [4] have no name",)),
    # participants
    Case("arm_wrong_case", cell("participants.csv", "arm", 4, "NAC"), ("participants.csv, column 'arm', line 6: unknown arm ['NAC']",)),
    Case("single_participant_arm", csv_edit("participants.csv", lambda d: d[(d["arm"] == "placebo") | (d["participant_id"] == NAC_IDS[0])]),
         ("arm 'nac' (declared in dataset.toml [arms]) has 1 participant(s)", "at least 2 per arm")),
    Case("conflicting_participant_rows", append_rows("participants.csv", lambda d: d.iloc[[0]].assign(site="other")),
         ("participants.csv, column 'participant_id', lines 2, 254: participant_id must be unique", "P0001")),
    Case("empty_participant_id", cell("participants.csv", "participant_id", 2, ""), ("participants.csv, column 'participant_id', line 4: participant_id is empty",)),
    Case("empty_site", cell("participants.csv", "site", 3, ""), ("participants.csv, column 'site', line 5: site is empty",)),
    Case("site_case_variants", cell("participants.csv", "site", 0, "Sydney"), ("column 'site', lines 2,", "differ only in upper/lower case ['Sydney', 'sydney']")),
    Case("bad_consent_flag", csv_edit("participants.csv", lambda d: d.assign(withdrew_consent=["maybe"] + ["0"] * (len(d) - 1))),
         ("column 'withdrew_consent', line 2", "must be 0/1")),
    # visits
    Case("score_not_number", cell("visits.csv", "madrs", 5, "twenty"), ("visits.csv, column 'madrs', line 7: MADRS score is not a number",)),
    Case("score_NA_text", cell("visits.csv", "madrs", 5, "NA"), ("column 'madrs', line 7", "leave the cell empty")),
    Case("score_inf", cell("visits.csv", "madrs", 5, "inf"), ("column 'madrs', line 7", "not a number")),
    Case("score_out_of_range", cell("visits.csv", "madrs", 10, "61"), ("visits.csv, column 'madrs', line 12: MADRS score outside its valid range 0-60",)),
    Case("score_negative", cell("visits.csv", "madrs", 10, "-1"), ("column 'madrs', line 12", "outside its valid range")),
    Case("score_fraction", cell("visits.csv", "madrs", 2, "20.5"), ("column 'madrs', line 4: MADRS is an integer scale",)),
    Case("week_text", cell("visits.csv", "week", 1, "baseline"), ("visits.csv, column 'week', line 3: week is not a number",)),
    Case("week_empty", cell("visits.csv", "week", 1, ""), ("column 'week', line 3: week is empty",)),
    Case("week_unscheduled", cell("visits.csv", "week", 1, "3"), ("column 'week', line 3: week [3] is not one of the scheduled visit weeks", "map_unscheduled")),
    Case("week_fraction", cell("visits.csv", "week", 1, "2.5"), ("column 'week', line 3: week must be a whole number",)),
    Case("week_beyond_window",
         chain(toml_edit("treatment_end = 12", 'treatment_end = 12\nmap_unscheduled = "nearest"\nwindow = 1'), cell("visits.csv", "week", P1_W12, "10")),
         (f"column 'week', {line(P1_W12)}: week [10] is more than 1 week(s) from every",)),
    Case("no_baseline", drop_rows("visits.csv", lambda d: (d["participant_id"] == "P0003") & (d["week"] == "0")),
         ("visits.csv, column 'madrs': 1 participant(s) have no baseline (week 0) score: ['P0003']",)),
    Case("blank_baseline", cell("visits.csv", "madrs", P3_W0, ""), ("no baseline (week 0) score: ['P0003']",)),
    Case("unknown_participant", append_rows("visits.csv", lambda d: d.iloc[[0]].assign(participant_id="X999")),
         ("visits.csv, column 'participant_id', line 1475: participant_id not in participants.csv (e.g. ['X999'])",)),
    Case("id_wrong_case", cell("visits.csv", "participant_id", 0, "p0001"), ("column 'participant_id', line 2", "['p0001']", "case-sensitive")),
    Case("conflicting_visit_rows", append_rows("visits.csv", lambda d: d.iloc[[3]].assign(madrs="59")),
         ("visits.csv, column 'participant_id, week', lines 5, 1475: more than one row for the same participant, week with different values",)),
    # biomarkers
    Case("biomarker_zero", cell("biomarkers.csv", "value", 7, "0"), ("biomarkers.csv, column 'value', line 9: biomarker value must be positive", "below_lod = 1")),
    Case("biomarker_negative", cell("biomarkers.csv", "value", 7, "-2.1"), ("column 'value', line 9", "must be positive", "-2.1")),
    Case("biomarker_inf", cell("biomarkers.csv", "value", 7, "inf"), ("column 'value', line 9: value is not a number",)),
    Case("biomarker_empty", cell("biomarkers.csv", "value", CRP_ROW, ""), (f"column 'value', {line(CRP_ROW)}: value is empty",)),
    Case("biomarker_with_unit_in_cell", cell("biomarkers.csv", "value", 0, "16.07 ng/mL"), ("line 2", "no units or symbols")),
    Case("unknown_marker", cell("biomarkers.csv", "marker", 0, "tnf"), ("biomarkers.csv, column 'marker', line 2: unknown marker ['tnf']",)),
    Case("unit_mismatch", csv_edit("biomarkers.csv", lambda d: d.assign(unit=d["marker"].map({"il6": "pg/mL", "crp": "mg/dL", "bdnf": "ng/mL"}))),
         ("biomarkers.csv, column 'unit'", "('crp', 'mg/dL')", "disagrees with dataset.toml")),
    Case("bad_lod_flag", cell("biomarkers.csv", "below_lod", 0, "2"), ("column 'below_lod', line 2", "must be 0/1")),
    Case("lod_without_limit", chain(cell("biomarkers.csv", "value", CRP_ROW, ""), cell("biomarkers.csv", "below_lod", CRP_ROW, "1")),
         (f"column 'value', {line(CRP_ROW)}: below_lod is set but neither the value nor a detection limit",)),
    Case("biomarker_week_unscheduled", cell("biomarkers.csv", "week", 0, "6"), ("biomarkers.csv, column 'week', line 2: week [6] is not one of the biomarker weeks",)),
    Case("conflicting_biomarker_rows", append_rows("biomarkers.csv", lambda d: d.iloc[[0]].assign(value="99")),
         ("biomarkers.csv", "more than one row for the same participant, week, marker", "lines 2, 743")),
    Case("units_missing_in_toml", toml_edit('[biomarkers.units]\nil6 = "pg/mL"\ncrp = "mg/L"\nbdnf = "ng/mL"\n\n[biomarkers.detection_limit]\nil6 = 0.7\n', ""),
         ("dataset.toml, column 'biomarkers.units'", "biomarkers.csv is present but [biomarkers.units] is missing")),
    # dataset.toml
    Case("toml_malformed", literal("broken_dataset.toml", "dataset.toml"), ("dataset.toml: is not valid TOML", "line 1")),
    Case("toml_unknown_section", text_edit("dataset.toml", lambda t: t + "\n[analysis]\nseed = 1\n"), ("unknown section(s) ['analysis']",)),
    Case("toml_key_typo", toml_edit("treatment_end = 12", "treatment_ned = 12"), ("unknown key(s) ['treatment_ned'] in [schedule]",)),
    Case("toml_no_week0", toml_edit("weeks = [0, 2, 4,", "weeks = [2, 4,"), ("must start with the baseline week 0",)),
    Case("toml_weeks_unsorted", toml_edit("weeks = [0, 2, 4,", "weeks = [0, 4, 2,"), ("strictly increasing",)),
    Case("toml_treatment_end", toml_edit("treatment_end = 12", "treatment_end = 10"), ("treatment_end must be one of the scheduled weeks",)),
    Case("toml_min_above_max", toml_edit("min = 0", "min = 70"), ("outcome min (70) must be below max (60)",)),
    Case("toml_range_quoted", toml_edit("max = 60", 'max = "60"'), ("outcome max must be a number, got '60'",)),
    Case("toml_integer_text", toml_edit("integer = true", 'integer = "yes"'), ("'integer' must be true or false",)),
    Case("toml_unknown_scale", toml_edit('name = "madrs"\nlabel = "MADRS"\nmin = 0\nmax = 60', 'name = "qids"'), ("'qids' is not a known scale", "valid range must be given")),
    Case("toml_same_arms", toml_edit('treatment = "nac"', 'treatment = "placebo"'), ("arm 'placebo' is both the control and a treatment arm",)),
    Case("toml_bad_mapping", toml_edit("treatment_end = 12", 'treatment_end = 12\nmap_unscheduled = "closest"'), ("map_unscheduled must be one of ['none', 'nearest']",)),
    Case("toml_window_without_mapping", toml_edit("treatment_end = 12", "treatment_end = 12\nwindow = 1"), ("window is set but map_unscheduled",)),
    Case("toml_negative_lod", toml_edit("il6 = 0.7", "il6 = -0.7"), ("detection limit of 'il6' must be a positive number",)),
    Case("toml_bad_unit", toml_edit('crp = "mg/L"', 'crp = "mg,L"'), ("unit of 'crp' is 'mg,L', which is not a unit",)),
    Case("toml_lod_unknown_marker", toml_edit("il6 = 0.7", "il6 = 0.7\ntnf = 1.0"), ("detection limit given for marker 'tnf'",)),
]

FILES = ("dataset.toml", "participants.csv", "visits.csv", "biomarkers.csv")


def make(case: Case, tmp_path: Path) -> Path:
    folder = tmp_path / "trial"
    shutil.copytree(DEFAULT_DATASET, folder)
    (folder / "truth.json").unlink(missing_ok=True)
    case.mutate(folder)
    return case.folder(folder) if case.folder else folder


def test_corpus_is_large_enough():
    assert len(ERRORS) >= 40 and len({c.name for c in ERRORS}) == len(ERRORS)
    assert len(ERRORS) + len(SAME) + len(CHANGED) >= 60


@pytest.mark.parametrize("case", ERRORS, ids=lambda c: c.name)
def test_bad_input_gives_clear_error(case, tmp_path):
    folder = make(case, tmp_path)
    with pytest.raises(DatasetError) as info:
        load_dataset(folder, max_file_bytes=case.limit)
    text = str(info.value)
    for frag in case.fragments:
        assert frag in text, f"{frag!r} not in error:\n{text}"
    assert "Fix:" in text, f"no fix in:\n{text}"
    assert any(name in text for name in FILES) or case.folder, "the message must name the file"
    assert text.startswith("invalid dataset"), text
    assert all(p.fix for p in info.value.problems), text


@pytest.mark.parametrize("case", ERRORS, ids=lambda c: c.name)
def test_bad_input_on_the_command_line_exits_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    folder = make(case, tmp_path / "data")
    if case.limit:
        monkeypatch.setenv("DEPTRIAL_MAX_FILE_BYTES", str(case.limit))
    out = tmp_path / "out"
    code = fit.main(["--data", str(folder), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert case.fragments[0] in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "nothing may be written next to --out"


# ---------------------------------------------------------------- accepted unchanged
def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def all_files(fn):
    def run(folder: Path):
        for name in ("dataset.toml", "participants.csv", "visits.csv", "biomarkers.csv"):
            text_edit(name, fn)(folder)

    return run


def add_bom(folder: Path):
    for name in ("dataset.toml", "participants.csv", "visits.csv", "biomarkers.csv"):
        path = folder / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


SAME = [
    Case("bom", add_bom, ()),
    Case("crlf", all_files(crlf), ()),
    Case("bom_and_crlf", chain(all_files(crlf), add_bom), ()),
    Case("old_mac_cr", all_files(lambda t: t.replace("\n", "\r")), ()),
    Case("blank_lines_and_spaces", text_edit("visits.csv", lambda t: "\n" + t.replace(",", " , ").replace("\nP0002", "\n\n  \nP0002") + "\n\n"), ()),
    Case("columns_reordered", csv_edit("visits.csv", lambda d: d[["madrs", "week", "participant_id"]]), ()),
    Case("rows_shuffled", csv_edit("visits.csv", lambda d: d.sample(frac=1.0, random_state=1)), ()),
    Case("weeks_as_decimals", csv_edit("visits.csv", lambda d: d.assign(week=d["week"] + ".0")), ()),
    Case("quoted_cells", text_edit("participants.csv", lambda t: t.replace("placebo", '"placebo"')), ()),
    Case("true_false_flags", csv_edit("biomarkers.csv", lambda d: d.assign(below_lod=d["below_lod"].map({"0": "false", "1": "TRUE"}))), ()),
    Case("matching_unit_column", csv_edit("biomarkers.csv", lambda d: d.assign(unit=d["marker"].map({"il6": "pg/mL", "crp": "mg/L", "bdnf": "ng/mL"}))), ()),
    Case("mapping_enabled_but_unused", toml_edit("treatment_end = 12", 'treatment_end = 12\nmap_unscheduled = "nearest"\nwindow = 1'), ()),
]


@pytest.fixture(scope="module")
def original():
    return load_dataset(DEFAULT_DATASET)


def same_data(a: xr.Dataset, b: xr.Dataset) -> None:
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert a.attrs["outcome"] == b.attrs["outcome"]


@pytest.mark.parametrize("case", SAME, ids=lambda c: c.name)
def test_awkward_but_valid_input_loads_identically(case, tmp_path, original):
    ds = load_dataset(make(case, tmp_path))
    same_data(ds, original)
    assert changes_of(ds) == []


# ---------------------------------------------------------------- accepted with listed changes
def withdraw(*ids):
    return csv_edit("participants.csv", lambda d: d.assign(withdrew_consent=d["participant_id"].isin(ids).map({True: "1", False: "0"})))


MAP = toml_edit("treatment_end = 12", 'treatment_end = 12\nmap_unscheduled = "nearest"\nwindow = 1')

CHANGED = [
    Case("exact_duplicate_visit", append_rows("visits.csv", lambda d: d.iloc[[3]]), ("visits.csv, line 1475",), changes=("dropped_duplicate",)),
    Case("exact_duplicate_participant", append_rows("participants.csv", lambda d: d.iloc[[0]]), ("line 254",), changes=("dropped_duplicate",)),
    Case("exact_duplicate_biomarker", append_rows("biomarkers.csv", lambda d: d.iloc[[5]]), ("line 743",), changes=("dropped_duplicate",)),
    Case("withdrew_consent", withdraw("P0004", "P0010"), ("['P0004', 'P0010']",), changes=("withdrew_consent",) * 3),
    Case("blank_score_is_missed_visit", cell("visits.csv", "madrs", P1_W12, ""), (line(P1_W12), "missed visits"), changes=("missed_visit",)),
    Case("mapped_week", chain(MAP, cell("visits.csv", "week", P1_W12, "11")), ("(11, 12)",), changes=("mapped_week",)),
    Case("mapped_fraction_week", chain(MAP, cell("visits.csv", "week", P1_W12, "12.4")), ("(12.4, 12)",), changes=("mapped_week",)),
    Case("unscheduled_extra_visit", chain(MAP, append_rows("visits.csv", lambda d: d.iloc[[P1_W12]].assign(week="13", madrs="40"))),
         ("closer to that scheduled week",), changes=("mapped_week", "dropped_unscheduled")),
    Case("extra_column", csv_edit("visits.csv", lambda d: d.assign(rater="AB")), ("['rater']",), changes=("ignored_columns",)),
    Case("spreadsheet_empty_rows", text_edit("visits.csv", lambda t: t + ",,\n,,\n"), ("lines 1475, 1476",), changes=("dropped_empty_row",)),
    Case("lod_from_metadata", chain(cell("biomarkers.csv", "value", IL6_ROW, ""), cell("biomarkers.csv", "below_lod", IL6_ROW, "1")),
         ("set to the limit declared",), changes=("filled_detection_limit",)),
    Case("blank_lod_flag", cell("biomarkers.csv", "below_lod", 0, ""), ("read as 0",), changes=("empty_flag",)),
]


@pytest.mark.parametrize("case", CHANGED, ids=lambda c: c.name)
def test_accepted_alterations_are_listed(case, tmp_path, original):
    ds = load_dataset(make(case, tmp_path))
    changes = changes_of(ds)
    assert sorted(c["action"] for c in changes) == sorted(case.changes), changes
    text = "\n".join(c["text"] for c in changes)
    for frag in case.fragments:
        assert frag in text, f"{frag!r} not in changes:\n{text}"
    assert all(c["count"] > 0 for c in changes)


def test_change_effects(tmp_path, original):
    """The listed changes do what they say: duplicates vanish, withdrawals leave, weeks move."""
    by = {c.name: c for c in CHANGED}
    same_data(load_dataset(make(by["exact_duplicate_visit"], tmp_path / "a")), original)
    ds = load_dataset(make(by["withdrew_consent"], tmp_path / "b"))
    assert ds.sizes["participant"] == original.sizes["participant"] - 2
    assert "P0004" not in ds["participant"].values
    same_data(ds, original.drop_sel(participant=["P0004", "P0010"]))
    ds = load_dataset(make(by["mapped_week"], tmp_path / "c"))
    same_data(ds, original)  # week 11 of P0001 moved to week 12, where it came from
    ds = load_dataset(make(by["unscheduled_extra_visit"], tmp_path / "d"))
    same_data(ds, original)  # the scheduled week-12 visit wins over the week-13 one
    ds = load_dataset(make(by["blank_score_is_missed_visit"], tmp_path / "e"))
    assert np.isnan(ds["score"].sel(participant="P0001", week=12))


def test_changes_are_printed_and_saved_by_fit(tmp_path, capsys, monkeypatch):
    """fit.py prints the loader's changes and records them in run.json (sampling stubbed out here;
    the real end-to-end path is covered by tests/test_reliability.py)."""
    import json

    case = {c.name: c for c in CHANGED}["withdrew_consent"]
    folder = make(case, tmp_path / "data")
    seen = {}

    def fake_run(specs, ds, design, source, changes, settings, tmp, out, **kwargs):
        seen["changes"] = changes_of(ds)
        (tmp / "run.json").write_text(json.dumps({"data_changes": changes}))
        return {}, {}, None, None

    monkeypatch.setattr(orchestrate, "run_models", fake_run)
    assert fit.main(["--data", str(folder), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "the loader changed 3 thing(s)" in err and "withdrew consent" in err
    saved = json.loads((tmp_path / "out" / "run.json").read_text())["data_changes"]
    assert [c["action"] for c in saved] == ["withdrew_consent"] * 3

