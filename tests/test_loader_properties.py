"""Property-based tests of the loader (hypothesis).

1. Any valid dataset (random ids, labels with commas/quotes/accents, schedules, integer or
   continuous scales, dropout, biomarkers with censoring, BOM/CRLF/LF) round-trips through
   write and load unchanged, with no changes reported.
2. Any single corruption of a valid dataset is either rejected with a DatasetError that names a
   file and gives a fix, or accepted with the alteration listed in the changes, or (when the
   corruption happens to change nothing, e.g. a value overwritten by itself) loads identically.
   Corruptions are the kind a hand-edited or badly exported file gets: a hostile cell, a
   duplicated row, a removed participant or baseline, a renamed column, a stray byte. Free-text
   columns (site, covariates, the title and outcome label) and deletions of later visits are excluded: any text is a valid
   site, and a missing later visit is ordinary dropout; for the same reason stray bytes are the
   undecodable (0xff), binary (NUL) and structural (comma) kind, not a printable character that
   could land inside a free-text cell.
"""

from __future__ import annotations

import json
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import DatasetError, DatasetMeta, TrialParameters, changes_of, load_dataset, simulate_trial

pytestmark = pytest.mark.unit

# CI (CI=true) draws the same examples on every run, so a red CI is a reproducible failure; local runs search afresh
SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("LOADER_EXAMPLES", "40")),
    deadline=None,
    derandomize=bool(__import__("os").environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FILES = ("dataset.toml", "participants.csv", "visits.csv", "biomarkers.csv")

# labels: letters, digits and characters that need CSV quoting or TOML escaping; no edge whitespace
LABEL = st.text(alphabet=string.ascii_letters + string.digits + "_-.,\"' éü/", min_size=1, max_size=8).map(str.strip).filter(bool)


@st.composite
def valid_trials(draw):
    gaps = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    weeks = tuple(int(w) for w in np.cumsum([0, *gaps]))
    tend = draw(st.sampled_from(weeks[1:]))
    integer = draw(st.booleans())
    hi = draw(st.integers(10, 80))
    control, *treatments = draw(st.lists(LABEL, min_size=2, max_size=4, unique=True))  # 1 to 3 active arms
    every = [control, *treatments]
    ids = draw(st.lists(LABEL, min_size=2 * len(every), max_size=2 * len(every) + 5, unique=True))
    arms = every * 2 + draw(st.lists(st.sampled_from(every), min_size=len(ids) - 2 * len(every), max_size=len(ids) - 2 * len(every)))
    doses = draw(st.one_of(st.just({}), st.fixed_dictionaries({a: st.integers(0, 400).map(float) for a in every})))
    pool = draw(st.lists(LABEL, min_size=1, max_size=4, unique_by=str.casefold))  # 'A' and 'a' would be an error
    sites = draw(st.lists(st.sampled_from(pool), min_size=len(ids), max_size=len(ids)))
    score_value = st.integers(0, hi).map(float) if integer else st.floats(0, hi, allow_nan=False, width=64)
    visits = []
    for pid in ids:
        for w in weeks:
            if w == 0 or draw(st.booleans()):
                visits.append((pid, w, draw(score_value)))
    markers = draw(st.sampled_from([(), ("il6",), ("il6", "crp")]))
    bweeks = (0, tend)
    bio = []
    for pid in ids:
        for m in markers:
            for w in bweeks:
                if draw(st.booleans()):
                    value = draw(st.floats(0.01, 500, allow_nan=False, width=64))
                    bio.append((pid, w, m, value, int(draw(st.booleans()))))
    meta = DatasetMeta(
        outcome="score_total", outcome_label="Score", score_min=0, score_max=hi, integer_scores=integer,
        control_arm=control, treatment_arms=tuple(treatments), doses=doses, weeks=weeks, treatment_end=tend, biomarker_weeks=bweeks,
        marker_units={m: "pg/mL" for m in markers}, title=draw(LABEL),
    )
    style = draw(st.sampled_from(["lf", "crlf", "bom", "bom_crlf"]))
    return meta, pd.DataFrame({"participant_id": ids, "arm": arms, "site": sites}), visits, bio, style


def write(folder: Path, meta, parts, visits, bio, style) -> None:
    folder.mkdir(parents=True)
    newline = "\r\n" if "crlf" in style else "\n"
    bom = "\ufeff" if "bom" in style else ""

    def put(name, text):
        (folder / name).write_text(bom + text.replace("\n", newline), encoding="utf-8", newline="")

    put("dataset.toml", meta.to_toml())
    put("participants.csv", parts.to_csv(index=False, lineterminator="\n"))
    put("visits.csv", pd.DataFrame(visits, columns=["participant_id", "week", meta.outcome]).to_csv(index=False, lineterminator="\n"))
    if meta.marker_units:
        frame = pd.DataFrame(bio, columns=["participant_id", "week", "marker", "value", "below_lod"])
        put("biomarkers.csv", frame.to_csv(index=False, lineterminator="\n"))


@SETTINGS
@given(valid_trials())
def test_valid_dataset_round_trips_unchanged(trial):
    meta, parts, visits, bio, style = trial
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "trial"
        write(folder, meta, parts, visits, bio, style)
        ds = load_dataset(folder)
    if meta.marker_units and not bio:  # declared markers, header-only biomarkers.csv: no biomarker data, and said so
        assert [c["action"] for c in changes_of(ds)] == ["no_biomarker_rows"]
    else:
        assert changes_of(ds) == []
    assert list(ds["participant"].values) == list(parts["participant_id"])
    assert list(ds["arm"].values) == list(parts["arm"]) and list(ds["site"].values) == list(parts["site"])
    assert [meta.arms[i] for i in ds["arm_index"].values] == list(parts["arm"])
    assert list(ds["week"].values) == list(meta.weeks)
    expected = np.full((len(parts), len(meta.weeks)), np.nan)
    row = {p: i for i, p in enumerate(parts["participant_id"])}
    for pid, w, y in visits:
        expected[row[pid], meta.weeks.index(w)] = y
    np.testing.assert_array_equal(ds["score"].values, expected)  # exact: CSV floats round-trip
    loaded_meta = __import__("data").meta_of(ds)
    assert loaded_meta == meta
    if meta.marker_units and bio:
        values = np.full((len(parts), len(meta.marker_units), 2), np.nan)
        below = np.zeros(values.shape, dtype=bool)
        mk = {m: j for j, m in enumerate(meta.marker_units)}
        for pid, w, m, v, b in bio:
            values[row[pid], mk[m], meta.biomarker_weeks.index(w)] = v
            below[row[pid], mk[m], meta.biomarker_weeks.index(w)] = bool(b)
        np.testing.assert_array_equal(ds["marker_value"].values, values)
        np.testing.assert_array_equal(ds["below_lod"].values, below)
    else:
        assert "marker_value" not in ds


# ---------------------------------------------------------------- single corruptions
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prop") / "base"
    simulate_trial(TrialParameters(n_participants=16, seed=5)).write(folder)
    (folder / "truth.json").unlink()
    return folder, load_dataset(folder)


def read(folder, name) -> pd.DataFrame:
    return pd.read_csv(folder / name, dtype=str, keep_default_na=False)


HOSTILE = ["", "NA", "1,5", "abc", "inf", "-3", "1e400", "2.5", "0", " 7 kg", "#N/A"]
CHECKED_COLUMNS = {  # columns with rules; free-text ones (site, age, sex) accept any text
    "participants.csv": ["participant_id", "arm"],
    "visits.csv": ["participant_id", "week", "madrs"],
    "biomarkers.csv": ["participant_id", "week", "marker", "value", "below_lod"],
}
# a value that is valid in that column cannot be told from a correct one; leave those out
VALID_THERE = {("biomarkers.csv", "value"): {"2.5"}, ("visits.csv", "madrs"): {"0"}}


@st.composite
def corruptions(draw):
    kind = draw(st.sampled_from(["cell", "duplicate_row", "drop_participant", "drop_baseline", "rename_column", "stray_byte"]))
    if kind == "cell":
        file = draw(st.sampled_from(sorted(CHECKED_COLUMNS)))
        column = draw(st.sampled_from(CHECKED_COLUMNS[file]))
        token = draw(st.sampled_from([t for t in HOSTILE if t not in VALID_THERE.get((file, column), set())]))
        return kind, file, column, draw(st.integers(0, 10_000)), token
    if kind in ("duplicate_row", "stray_byte"):
        file = draw(st.sampled_from(FILES[1:] if kind == "duplicate_row" else FILES))
        extra = draw(st.sampled_from(["\xff", "\x00", ","])) if kind == "stray_byte" else None
        return kind, file, None, draw(st.integers(0, 10_000)), extra
    if kind == "rename_column":
        file = draw(st.sampled_from(sorted(CHECKED_COLUMNS)))
        column = draw(st.sampled_from(CHECKED_COLUMNS[file] + (["below_lod"] if file == "biomarkers.csv" else [])))
        return kind, file, column, 0, draw(st.sampled_from([column.upper(), column + " ", "x_" + column, column.replace("_", " ")]))
    return kind, "participants.csv" if kind == "drop_participant" else "visits.csv", None, draw(st.integers(0, 10_000)), None


def corrupt(folder: Path, how) -> None:
    kind, file, column, pick, extra = how
    path = folder / file
    if kind == "stray_byte":
        raw = path.read_bytes()
        at = pick % (len(raw) + 1)
        path.write_bytes(raw[:at] + extra.encode("latin-1") + raw[at:])
        return
    df = read(folder, file)
    if kind == "cell":
        df.loc[pick % len(df), column] = extra
    elif kind == "duplicate_row":
        df = pd.concat([df, df.iloc[[pick % len(df)]]], ignore_index=True)
    elif kind == "drop_participant":
        df = df.drop(index=pick % len(df))
    elif kind == "drop_baseline":
        base_rows = df.index[df["week"] == "0"]
        df = df.drop(index=base_rows[pick % len(base_rows)])
    elif kind == "rename_column":
        df = df.rename(columns={column: extra})
    df.to_csv(path, index=False, lineterminator="\n")


@SETTINGS
@given(corruptions())
def test_any_single_corruption_is_rejected_or_reported(base, how):
    folder, original = base
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "trial"
        shutil.copytree(folder, copy)
        corrupt(copy, how)
        try:
            ds = load_dataset(copy)
        except DatasetError as exc:
            text = str(exc)
            assert any(name in text for name in FILES), text
            assert all(p.fix for p in exc.problems), text
            assert "Traceback" not in text
            return
    changes = changes_of(ds)
    if changes:
        assert all(c["file"] in FILES and c["detail"] for c in changes)
        return
    # accepted without a reported change: then nothing may have changed
    xr.testing.assert_identical(ds.drop_attrs(), original.drop_attrs())
    free_text = ("title", "outcome_label")  # display text: any value is valid
    got, want = (json.loads(d.attrs["meta"]) for d in (ds, original))
    assert {k: v for k, v in got.items() if k not in free_text} == {k: v for k, v in want.items() if k not in free_text}
