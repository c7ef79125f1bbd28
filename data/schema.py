"""Load and validate a trial dataset folder into one xarray Dataset.

This is the only place raw CSVs are read. Everything downstream (models, diagnostics,
planning) sees the validated Dataset, so every rule about the files lives here and every
error names the file, column, CSV lines and the rule broken.

Layout of a dataset folder (see README, 'Data interface'):
    dataset.toml       outcome scale, arms, visit schedule, marker units
    participants.csv   participant_id, arm, site, [baseline covariates...]
    visits.csv         participant_id, week, <outcome>
    biomarkers.csv     participant_id, week, marker, value, [below_lod], [unit]   (optional)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .errors import DatasetError, Problem, ProblemList
from .meta import META_FILE, DatasetMeta, read_meta

PARTICIPANTS_FILE = "participants.csv"
VISITS_FILE = "visits.csv"
BIOMARKERS_FILE = "biomarkers.csv"

TRUE_WORDS = {"1", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "n", "f", ""}


def _lines(mask) -> list[int]:
    """CSV line numbers of the rows selected by a boolean mask (header is line 1)."""
    return [int(i) + 2 for i in np.flatnonzero(np.asarray(mask))]


def read_csv_strict(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a CSV as text, stripping whitespace, with schema-level errors for the common failures."""
    name = path.name
    if not path.is_file():
        raise DatasetError([Problem(name, f"is missing from {path.parent}.", fix="see README, 'Data interface'")])
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            [Problem(name, f"is not UTF-8 text (byte {exc.start} cannot be decoded).", fix="re-export the file as UTF-8")]
        ) from None
    if not text.strip():
        raise DatasetError([Problem(name, "is empty.", fix=f"it needs a header row with {required} and data rows")])
    import io

    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.ParserError as exc:
        raise DatasetError([Problem(name, f"could not be parsed as CSV ({exc}).", fix="check for stray commas or quotes")]) from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        hint = ""
        if len(df.columns) == 1 and (";" in df.columns[0] or "\t" in df.columns[0]):
            hint = " The header looks separated by ';' or tabs: files must be comma-separated."
        raise DatasetError(
            [
                Problem(
                    name,
                    f"is missing required column(s) {missing}; found {list(df.columns)}.{hint}",
                    fix=f"the header must contain {required}",
                )
            ]
        )
    dup_cols = [c for c in set(df.columns) if list(df.columns).count(c) > 1]
    if dup_cols:
        raise DatasetError([Problem(name, f"has duplicated column name(s) {sorted(dup_cols)}.")])
    for c in df.columns:
        df[c] = df[c].astype(str).str.strip()
    if len(df) == 0:
        raise DatasetError([Problem(name, "has a header but no data rows.")])
    return df


def _parse_numbers(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Numbers from text; returns (values with NaN for blanks, mask of non-blank text that is not a number)."""
    blank = series.eq("")
    values = pd.to_numeric(series.where(~blank, None), errors="coerce")
    bad = (~blank) & values.isna()
    return values.astype(float), bad.to_numpy()


def _check_ids(df: pd.DataFrame, file: str, known: set[str], problems: ProblemList) -> None:
    empty = df["participant_id"].eq("")
    if empty.any():
        problems.add(file, "participant_id is empty.", "participant_id", _lines(empty))
    unknown = ~df["participant_id"].isin(known) & ~empty
    if unknown.any():
        ids = sorted(df.loc[unknown, "participant_id"].unique())[:5]
        problems.add(
            file,
            f"participant_id not in {PARTICIPANTS_FILE} (e.g. {ids}).",
            "participant_id",
            _lines(unknown),
            f"add them to {PARTICIPANTS_FILE} or remove their rows",
        )


def _parse_weeks(df: pd.DataFrame, file: str, allowed: tuple[int, ...], problems: ProblemList, what: str) -> pd.Series:
    weeks, nonnum = _parse_numbers(df["week"])
    blank = df["week"].eq("").to_numpy()
    if blank.any():
        problems.add(file, "week is empty.", "week", _lines(blank))
    if nonnum.any():
        problems.add(file, "week is not a number.", "week", _lines(nonnum))
    frac = weeks.notna().to_numpy() & (weeks.to_numpy() % 1 != 0)
    if frac.any():
        problems.add(file, "week must be a whole number of weeks.", "week", _lines(frac))
    off = weeks.notna().to_numpy() & ~frac & ~weeks.isin(allowed).to_numpy()
    if off.any():
        seen = sorted(set(weeks[off].astype(int)))[:6]
        problems.add(
            file,
            f"week {seen} is not one of the {what} {list(allowed)} in {META_FILE}.",
            "week",
            _lines(off),
            f"add the week to {META_FILE} or map the visit to its scheduled week",
        )
    return weeks


def _load_participants(folder: Path, meta: DatasetMeta) -> pd.DataFrame:
    file = PARTICIPANTS_FILE
    df = read_csv_strict(folder / file, ["participant_id", "arm", "site"])
    p = ProblemList()
    empty = df["participant_id"].eq("")
    if empty.any():
        p.add(file, "participant_id is empty.", "participant_id", _lines(empty))
    dup = df["participant_id"].duplicated(keep=False) & ~empty
    if dup.any():
        ids = sorted(df.loc[dup, "participant_id"].unique())[:5]
        p.add(file, f"participant_id must be unique; repeated: {ids}.", "participant_id", _lines(dup))
    arms = {meta.control_arm, meta.treatment_arm}
    bad_arm = ~df["arm"].isin(arms)
    if bad_arm.any():
        seen = sorted(df.loc[bad_arm, "arm"].unique())[:5]
        p.add(
            file,
            f"unknown arm {seen}; {META_FILE} declares control '{meta.control_arm}' and treatment '{meta.treatment_arm}'.",
            "arm",
            _lines(bad_arm),
            "use the arm labels of dataset.toml [arms] (labels are case-sensitive)",
        )
    bad_site = df["site"].eq("")
    if bad_site.any():
        p.add(file, "site is empty.", "site", _lines(bad_site), "give every participant a site (one label if single-site)")
    p.raise_if_any()
    counts = df["arm"].value_counts()
    for arm in (meta.control_arm, meta.treatment_arm):
        if counts.get(arm, 0) < 2:
            p.add(
                file,
                f"arm '{arm}' has {counts.get(arm, 0)} participant(s); a two-arm comparison needs at least 2 per arm.",
                "arm",
            )
    p.raise_if_any()
    return df


def _load_visits(folder: Path, meta: DatasetMeta, ids: set[str]) -> pd.DataFrame:
    file = VISITS_FILE
    out = meta.outcome
    df = read_csv_strict(folder / file, ["participant_id", "week", out])
    p = ProblemList()
    _check_ids(df, file, ids, p)
    weeks = _parse_weeks(df, file, meta.weeks, p, "scheduled visit weeks")
    score, nonnum = _parse_numbers(df[out])
    if nonnum.any():
        p.add(file, f"{meta.outcome_label} score is not a number.", out, _lines(nonnum), "use '.' as the decimal mark")
    rng = score.notna().to_numpy() & ((score < meta.score_min) | (score > meta.score_max)).to_numpy()
    if rng.any():
        p.add(
            file,
            f"{meta.outcome_label} score outside its valid range {meta.score_min:g}-{meta.score_max:g}.",
            out,
            _lines(rng),
        )
    if meta.integer_scores:
        frac = score.notna().to_numpy() & (score.to_numpy() % 1 != 0)
        if frac.any():
            p.add(file, f"{meta.outcome_label} is an integer scale but the score has a fraction.", out, _lines(frac),
                  "set integer = false under [outcome] if fractional scores are intended")
    p.raise_if_any()
    df = df.assign(week=weeks.astype(int), score=score)
    dup = df.duplicated(["participant_id", "week"], keep=False)
    if dup.any():
        p.add(file, "more than one row for the same participant and week.", "participant_id, week", _lines(dup),
              "keep one row per participant and visit")
    p.raise_if_any()
    df = df[df["score"].notna()]
    has_base = set(df.loc[df["week"] == 0, "participant_id"])
    no_base = sorted(ids - has_base)
    if no_base:
        p.add(
            file,
            f"{len(no_base)} participant(s) have no baseline (week 0) score: {no_base[:8]}{' ...' if len(no_base) > 8 else ''}.",
            out,
            fix="every analysed participant needs a week-0 score; remove them from participants.csv if not analysed",
        )
    p.raise_if_any()
    return df[["participant_id", "week", "score"]]


def _load_biomarkers(folder: Path, meta: DatasetMeta, ids: set[str]) -> pd.DataFrame | None:
    file = BIOMARKERS_FILE
    if not (folder / file).exists():
        return None
    if not meta.marker_units:
        raise DatasetError(
            [Problem(META_FILE, f"{file} is present but [biomarkers.units] is missing.", fix="declare each marker's unit, e.g. il6 = \"pg/mL\"")]
        )
    df = read_csv_strict(folder / file, ["participant_id", "week", "marker", "value"])
    p = ProblemList()
    _check_ids(df, file, ids, p)
    weeks = _parse_weeks(df, file, meta.biomarker_weeks, p, "biomarker weeks")
    bad_marker = ~df["marker"].isin(meta.marker_units)
    if bad_marker.any():
        seen = sorted(df.loc[bad_marker, "marker"].unique())[:5]
        p.add(file, f"unknown marker {seen}; {META_FILE} declares {sorted(meta.marker_units)}.", "marker",
              _lines(bad_marker), "add the marker and its unit to [biomarkers.units]")
    if "unit" in df.columns:
        expected = df["marker"].map(meta.marker_units)
        wrong = expected.notna() & (df["unit"] != "") & (df["unit"] != expected)
        if wrong.any():
            pairs = sorted({(m, u) for m, u in zip(df.loc[wrong, "marker"], df.loc[wrong, "unit"])})[:4]
            p.add(file, f"unit disagrees with {META_FILE} [biomarkers.units] for (marker, unit) {pairs}.", "unit",
                  _lines(wrong), "convert the values to the declared unit, or correct the metadata")
    if "below_lod" in df.columns:
        flag_text = df["below_lod"].str.lower()
        bad_flag = ~flag_text.isin(TRUE_WORDS | FALSE_WORDS)
        if bad_flag.any():
            p.add(file, "below_lod must be 0/1 (or true/false).", "below_lod", _lines(bad_flag))
        below = flag_text.isin(TRUE_WORDS).to_numpy()
    else:
        below = np.zeros(len(df), dtype=bool)
    value, nonnum = _parse_numbers(df["value"])
    if nonnum.any():
        p.add(file, "value is not a number.", "value", _lines(nonnum), "use '.' as the decimal mark, no units in the cell")
    # Values below the detection limit: take the declared limit when the cell is blank.
    lod = df["marker"].map(meta.detection_limits).astype(float)
    fill = below & value.isna().to_numpy() & lod.notna().to_numpy()
    value = value.where(~fill, lod)
    no_limit = below & value.isna().to_numpy()
    if no_limit.any():
        p.add(file, "below_lod is set but neither the value nor a detection limit in dataset.toml gives the limit.",
              "value", _lines(no_limit), "add [biomarkers.detection_limit] for the marker")
    blank = value.isna().to_numpy() & ~nonnum & ~no_limit
    if blank.any():
        p.add(file, "value is empty.", "value", _lines(blank), "drop rows of samples not taken; mark censored ones with below_lod = 1")
    nonpos = value.notna().to_numpy() & (value.to_numpy() <= 0)
    if nonpos.any():
        p.add(file, "biomarker value must be positive (it is analysed on the log scale).", "value", _lines(nonpos),
              "mark results under the assay's detection limit with below_lod = 1 instead of 0")
    p.raise_if_any()
    df = df.assign(week=weeks.astype(int), value=value.astype(float), below_lod=below)
    dup = df.duplicated(["participant_id", "week", "marker"], keep=False)
    if dup.any():
        p.add(file, "more than one row for the same participant, week and marker.", "participant_id, week, marker", _lines(dup))
    p.raise_if_any()
    return df[["participant_id", "week", "marker", "value", "below_lod"]]


def dataset_checksum(folder: Path) -> str:
    """SHA-256 over the dataset's files, in a fixed order: stamps every fit with the data it saw."""
    h = hashlib.sha256()
    for name in (META_FILE, PARTICIPANTS_FILE, VISITS_FILE, BIOMARKERS_FILE):
        path = Path(folder) / name
        if path.exists():
            h.update(name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _covariates(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Optional baseline covariates: numeric columns stay numeric, others are kept as text."""
    out = {}
    for col in df.columns:
        if col in ("participant_id", "arm", "site"):
            continue
        nums, bad = _parse_numbers(df[col])
        out[col] = nums.to_numpy() if not bad.any() else df[col].to_numpy(dtype=str)
    return out


def load_dataset(folder: str | Path) -> xr.Dataset:
    """Validate a dataset folder and return it as one xarray Dataset.

    Dims: participant, week (the scheduled visit weeks), and when biomarkers are present,
    marker and biomarker_week. Raises DatasetError listing every broken rule.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError([Problem(str(folder), "is not a folder.", fix="--data takes a dataset folder (see README)")])
    meta = read_meta(folder)
    parts = _load_participants(folder, meta)
    ids = set(parts["participant_id"])
    visits = _load_visits(folder, meta, ids)
    bio = _load_biomarkers(folder, meta, ids)

    pid = parts["participant_id"].to_numpy(dtype=str)
    index = {p: i for i, p in enumerate(pid)}
    weeks = np.asarray(meta.weeks)
    widx = {w: j for j, w in enumerate(weeks)}
    score = np.full((len(pid), len(weeks)), np.nan)
    score[visits["participant_id"].map(index).to_numpy(), visits["week"].map(widx).to_numpy()] = visits["score"].to_numpy()

    ds = xr.Dataset(
        {
            "arm": ("participant", parts["arm"].to_numpy(dtype=str)),
            "treated": ("participant", (parts["arm"] == meta.treatment_arm).to_numpy().astype(np.int8)),
            "site": ("participant", parts["site"].to_numpy(dtype=str)),
            "score": (("participant", "week"), score),
        },
        coords={"participant": pid, "week": weeks},
    )
    for name, values in _covariates(parts).items():
        ds[f"covariate_{name}"] = ("participant", values)
    if bio is not None:
        markers = list(meta.marker_units)
        bweeks = np.asarray(meta.biomarker_weeks)
        values = np.full((len(pid), len(markers), len(bweeks)), np.nan)
        below = np.zeros(values.shape, dtype=bool)
        i = bio["participant_id"].map(index).to_numpy()
        m = bio["marker"].map({k: j for j, k in enumerate(markers)}).to_numpy()
        w = bio["week"].map({k: j for j, k in enumerate(bweeks)}).to_numpy()
        values[i, m, w] = bio["value"].to_numpy()
        below[i, m, w] = bio["below_lod"].to_numpy()
        ds = ds.assign_coords(marker=markers, biomarker_week=bweeks)
        ds["marker_value"] = (("participant", "marker", "biomarker_week"), values)
        ds["below_lod"] = (("participant", "marker", "biomarker_week"), below)
    ds.attrs.update(
        meta=json.dumps(meta.to_dict()),
        outcome=meta.outcome,
        source=str(folder.resolve()),
        checksum=dataset_checksum(folder),
        has_biomarkers=int(bio is not None),
    )
    return ds


def meta_of(ds: xr.Dataset) -> DatasetMeta:
    """The DatasetMeta stored on a loaded Dataset."""
    d = json.loads(ds.attrs["meta"])
    d["weeks"] = tuple(d["weeks"])
    d["biomarker_weeks"] = tuple(d["biomarker_weeks"])
    return DatasetMeta(**d)
