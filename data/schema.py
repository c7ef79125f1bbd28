"""Load and validate a trial dataset folder into one xarray Dataset.

This is the only place raw CSVs are read. Everything downstream (models, diagnostics,
planning) sees the validated Dataset, so every rule about the files lives here and every
error names the file, column, CSV lines and the rule broken.

Layout of a dataset folder (see README, 'Data interface'):
    dataset.toml       outcome scale, arms, visit schedule, marker units
    participants.csv   participant_id, arm, site, [baseline covariates, those used declared in dataset.toml]
    visits.csv         participant_id, week, <outcome>, [off_treatment]
    biomarkers.csv     participant_id, week, marker, value, [below_lod], [unit]   (optional)
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .errors import Change, DatasetError, Problem, ProblemList
from .meta import META_FILE, DatasetMeta, read_meta, read_text_file

PARTICIPANTS_FILE = "participants.csv"
VISITS_FILE = "visits.csv"
BIOMARKERS_FILE = "biomarkers.csv"

TRUE_WORDS = {"1", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "n", "f", ""}
NA_WORDS = {"na", "n/a", "nan", "null", "none", "missing", ".", "-", "#n/a"}
CONSENT_COLUMN = "withdrew_consent"  # optional participants.csv flag: 1 drops the participant's data
OFF_TREATMENT_COLUMN = "off_treatment"  # optional visits.csv flag: 1 after the participant stopped the randomised treatment early
DECIMAL_COMMA = re.compile(r"^[-+]?\d+,\d+$")


def _lines(df: pd.DataFrame, mask) -> list[int]:
    """CSV line numbers of the rows selected by a boolean mask (the frame's index holds them)."""
    return [int(i) for i in df.index[np.asarray(mask, dtype=bool)]]


def _closest(name: str, options) -> str:
    low = {o.lower().replace(" ", "_"): o for o in options}
    key = name.lower().replace(" ", "_")
    if key in low:
        return low[key]
    hit = difflib.get_close_matches(key, list(low), n=1, cutoff=0.6)
    return low[hit[0]] if hit else ""


def _records(text: str, name: str) -> tuple[list[str], list[list[str]], list[int], ProblemList]:
    """Split CSV text into header, records and each record's first line number (csv module, any newline)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, starts = [], []
    prev = 0
    try:
        for row in reader:
            rows.append(row)
            starts.append(prev + 1)
            prev = reader.line_num
    except csv.Error as exc:
        raise DatasetError(
            [Problem(name, f"could not be parsed as CSV ({exc}).", lines=(prev + 1,), fix="check for a stray or unbalanced quote character")]
        ) from None
    # blank lines carry nothing; skip them (line numbers of the others stay true)
    keep = [i for i, r in enumerate(rows) if r and not (len(r) == 1 and not r[0].strip())]
    rows = [rows[i] for i in keep]
    starts = [starts[i] for i in keep]
    return rows[0] if rows else [], rows[1:], starts[1:], ProblemList()


def read_csv_strict(path: Path, required: list[str], limit: int | None = None, changes: list | None = None,
                    allow_no_rows: bool = False) -> pd.DataFrame:
    """Read a CSV as stripped text; the frame's index is each row's CSV line number (header = line 1).

    allow_no_rows: a header without data rows gives an empty frame instead of an error.

    Accepts a UTF-8 byte-order mark and Windows/old-Mac line endings (they load identically);
    rejects, with the fix, semicolon/tab exports, rows with the wrong number of fields (e.g. an
    unquoted decimal comma), missing or misnamed columns, empty files. Rows whose cells are all
    empty (spreadsheet residue such as ',,,') are dropped and listed in `changes`.
    """
    name = path.name
    text = read_text_file(path, limit)
    if not text.strip():
        raise DatasetError([Problem(name, "is empty.", fix=f"it needs a header row with {required} and data rows")])
    header_line = text.lstrip("\r\n").splitlines()[0]
    if "," not in header_line and (";" in header_line or "\t" in header_line):
        sep = "';'" if ";" in header_line else "tabs"
        raise DatasetError(
            [
                Problem(
                    name,
                    f"is separated by {sep}, not commas (a spreadsheet export in a locale that uses decimal commas?); "
                    f"header: {header_line[:80]!r}.",
                    lines=(1,),
                    fix="re-export as 'CSV UTF-8 (comma delimited)' with '.' as the decimal mark, "
                    "or convert: decimal ',' -> '.', then ';' -> ','",
                )
            ]
        )
    header, rows, starts, p = _records(text, name)
    header = [h.strip() for h in header]
    n = len(header)
    unnamed = [i + 1 for i, h in enumerate(header) if not h]
    if unnamed:
        raise DatasetError([Problem(name, f"header column(s) {unnamed} have no name.", lines=(1,), fix="name every column or delete the empty ones")])
    dup_cols = sorted(c for c in set(header) if header.count(c) > 1)
    if dup_cols:
        raise DatasetError([Problem(name, f"has duplicated column name(s) {dup_cols}.", lines=(1,), fix="each column name must appear once")])
    missing = [c for c in required if c not in header]
    if missing:
        guesses = {c: _closest(c, [h for h in header if h not in required]) for c in missing}
        hint = "; ".join(f"'{g}' should be named '{c}'" for c, g in guesses.items() if g)
        raise DatasetError(
            [
                Problem(
                    name,
                    f"is missing required column(s) {missing}; found {header}." + (f" Probably {hint}." if hint else ""),
                    lines=(1,),
                    fix=f"the header must contain {required} (names are case-sensitive)",
                )
            ]
        )
    long = [s for r, s in zip(rows, starts) if len(r) > n]
    short = [s for r, s in zip(rows, starts) if len(r) < n and any(c.strip() for c in r)]
    if long:
        comma = any(DECIMAL_COMMA.match(f"{a.strip()},{b.strip()}") for r in rows if len(r) > n for a, b in zip(r, r[1:]))
        p.add(
            name,
            f"row has more fields than the {n} header columns.",
            lines=long,
            fix="a decimal comma (e.g. 1,5) splits a number in two: use '.' as the decimal mark"
            if comma
            else "quote cells that contain commas, or remove the extra commas",
        )
    if short:
        p.add(name, f"row has fewer fields than the {n} header columns.", lines=short,
              fix="every row needs a cell (possibly empty) for each column")
    p.raise_if_any()
    empty = [s for r, s in zip(rows, starts) if not any(c.strip() for c in r)]
    body = [(r, s) for r, s in zip(rows, starts) if any(c.strip() for c in r)]
    if empty and changes is not None:
        changes.append(Change(name, "dropped_empty_row", f"{len(empty)} row(s) with every cell empty ignored.", lines=tuple(empty), count=len(empty)))
    if not body and not allow_no_rows:
        raise DatasetError([Problem(name, "has a header but no data rows.", fix="add the data rows below the header")])
    df = pd.DataFrame([r for r, _ in body], columns=header, index=pd.Index([s for _, s in body], name="line"), dtype=str)
    for c in df.columns:
        df[c] = df[c].str.strip()
    return df


def _parse_numbers(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Numbers from text; returns (values with NaN for blanks, mask of non-blank cells that are not finite numbers)."""
    blank = series.eq("")
    values = pd.to_numeric(series.where(~blank, None), errors="coerce").astype(float)
    bad = ((~blank) & ~np.isfinite(values)).to_numpy()
    return values.where(~pd.Series(bad, index=series.index)), bad


def _number_fix(cells: pd.Series) -> str:
    """The most useful fix for cells that are not numbers."""
    text = cells.str.lower()
    if cells.str.match(DECIMAL_COMMA.pattern).any():
        return "it looks like a decimal comma: use '.' as the decimal mark (e.g. 1.5, not 1,5)"
    if text.isin(NA_WORDS).any():
        return "leave the cell empty for a missing value instead of writing NA"
    if cells.str.contains(r"\d", regex=True).any():
        return "write only the number, with '.' as the decimal mark and no units or symbols"
    return "write a number with '.' as the decimal mark"


def _not_number(df, file, column, mask, problems, what) -> None:
    if mask.any():
        seen = sorted(set(df.loc[mask, column]))[:4]
        problems.add(file, f"{what} is not a number (e.g. {seen}).", column, _lines(df, mask), _number_fix(df.loc[mask, column]))


def _check_ids(df: pd.DataFrame, file: str, known: set[str], problems: ProblemList) -> None:
    empty = df["participant_id"].eq("")
    if empty.any():
        problems.add(file, "participant_id is empty.", "participant_id", _lines(df, empty), "give every row its participant's id")
    unknown = ~df["participant_id"].isin(known) & ~empty
    if unknown.any():
        ids = sorted(df.loc[unknown, "participant_id"].unique())[:5]
        problems.add(
            file,
            f"participant_id not in {PARTICIPANTS_FILE} (e.g. {ids}).",
            "participant_id",
            _lines(df, unknown),
            f"add them to {PARTICIPANTS_FILE} or remove their rows (ids are case-sensitive)",
        )


def _drop_withdrawn(df: pd.DataFrame, file: str, withdrawn: set[str], changes: list) -> pd.DataFrame:
    gone = df["participant_id"].isin(withdrawn)
    if gone.any():
        changes.append(
            Change(file, "withdrew_consent", f"{int(gone.sum())} row(s) of participants who withdrew consent dropped.",
                   "participant_id", tuple(_lines(df, gone)), int(gone.sum()))
        )
    return df[~gone]


def week_column(df, file, problems, blank_fix: str) -> tuple[pd.Series, np.ndarray]:
    """The `week` column as numbers and where it holds one; empty and non-numeric entries are reported
    (the fix for an empty one: `blank_fix`)."""
    weeks, nonnum = _parse_numbers(df["week"])
    blank = df["week"].eq("").to_numpy()
    if blank.any():
        problems.add(file, "week is empty.", "week", _lines(df, blank), blank_fix)
    _not_number(df, file, "week", nonnum, problems, "week")
    return weeks, weeks.notna().to_numpy()


def _parse_weeks(df, file, allowed, problems, what, meta: DatasetMeta, changes: list) -> tuple[pd.Series, pd.Series]:
    """Weeks as numbers; with map_unscheduled = "nearest", off-schedule weeks within the window are moved
    to the nearest scheduled week (ties to the earlier week). Returns (week, distance moved)."""
    weeks, ok = week_column(df, file, problems, "give every row its visit week")
    allowed_arr = np.asarray(allowed, dtype=float)
    off = ok & ~weeks.isin(allowed_arr).to_numpy()
    dist = pd.Series(0.0, index=df.index)
    mapped = weeks.copy()
    if meta.map_unscheduled == "nearest" and off.any():
        w = weeks[off].to_numpy()
        gap = np.abs(w[:, None] - allowed_arr[None, :])
        j = gap.argmin(axis=1)  # argmin takes the first (earlier) week on ties
        near = allowed_arr[j]
        d = gap[np.arange(len(w)), j]
        inside = d <= meta.unscheduled_window
        idx = df.index[off]
        mapped.loc[idx[inside]] = near[inside]
        dist.loc[idx[inside]] = d[inside]
        pairs = sorted({(_num(a), int(b)) for a, b in zip(w[inside], near[inside])})
        if inside.any():
            changes.append(
                Change(file, "mapped_week",
                       f"{int(inside.sum())} visit(s) at unscheduled weeks moved to the nearest {what[:-1] if what.endswith('s') else what} "
                       f"within {meta.unscheduled_window:g} week(s) (from -> to: {pairs[:6]}{' ...' if len(pairs) > 6 else ''}).",
                       "week", tuple(int(i) for i in idx[inside]), int(inside.sum()))
            )
        still = np.zeros(len(df), dtype=bool)
        still[np.flatnonzero(off)[~inside]] = True
        if still.any():
            seen = sorted({_num(x) for x in weeks[still]})[:6]
            problems.add(
                file,
                f"week {seen} is more than {meta.unscheduled_window:g} week(s) from every {what[:-1] if what.endswith('s') else what} "
                f"{list(allowed)} in {META_FILE}.",
                "week",
                _lines(df, still),
                f"correct the week, add it to {META_FILE}, or widen [schedule] window",
            )
    elif off.any():
        frac = off & (weeks.to_numpy() % 1 != 0)
        whole = off & ~frac
        if frac.any():
            problems.add(file, "week must be a whole number of weeks.", "week", _lines(df, frac),
                         f"round to the scheduled week, or set [schedule] map_unscheduled = \"nearest\" in {META_FILE}")
        if whole.any():
            seen = sorted({int(x) for x in weeks[whole]})[:6]
            problems.add(
                file,
                f"week {seen} is not one of the {what} {list(allowed)} in {META_FILE}.",
                "week",
                _lines(df, whole),
                f"add the week to {META_FILE}, correct it, or set [schedule] map_unscheduled = \"nearest\" "
                "(with a window in weeks) to move visits to the nearest scheduled week",
            )
    return mapped, dist


def _num(x) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def _dedupe(df: pd.DataFrame, file: str, keys: list[str], dist: pd.Series, problems: ProblemList, changes: list) -> pd.DataFrame:
    """Exact duplicate rows are removed (reported); rows sharing `keys` keep the on-schedule (or nearest) visit,
    the farther mapped ones are dropped (reported); genuinely conflicting rows are an error."""
    exact = df.duplicated(keep="first")
    if exact.any():
        changes.append(Change(file, "dropped_duplicate", f"{int(exact.sum())} exact duplicate row(s) removed (identical to an earlier row).",
                              lines=tuple(_lines(df, exact)), count=int(exact.sum())))
        df, dist = df[~exact], dist[~exact]
    if not df.duplicated(keys, keep=False).any():
        return df
    d = dist.loc[df.index]
    best = d.groupby([df[k] for k in keys]).transform("min")
    farther = (d > best).to_numpy()
    if farther.any():
        changes.append(Change(file, "dropped_unscheduled",
                              f"{int(farther.sum())} unscheduled visit(s) dropped: the participant has a visit closer to that scheduled week.",
                              "week", tuple(_lines(df, farther)), int(farther.sum())))
        df = df[~farther]
    clash = df.duplicated(keys, keep=False)
    if clash.any():
        problems.add(file, f"more than one row for the same {', '.join(k.replace('participant_id', 'participant') for k in keys)} "
                     "with different values.", ", ".join(keys), _lines(df, clash),
                     "keep one row per " + ", ".join(k.replace("participant_id", "participant") for k in keys))
    return df


def _flag(df, file, column, problems) -> np.ndarray:
    text = df[column].str.lower()
    bad = ~text.isin(TRUE_WORDS | FALSE_WORDS)
    if bad.any():
        problems.add(file, f"{column} must be 0/1 (or true/false), got {sorted(set(df.loc[bad, column]))[:4]}.", column, _lines(df, bad),
                     "write 1 (or true) when the flag applies, 0 (or false) otherwise")
    return text.isin(TRUE_WORDS).to_numpy()


def _load_participants(folder: Path, meta: DatasetMeta, limit, changes: list) -> tuple[pd.DataFrame, set[str]]:
    file = PARTICIPANTS_FILE
    df = read_csv_strict(folder / file, ["participant_id", "arm", "site"], limit, changes)
    p = ProblemList()
    exact = df.duplicated(keep="first")
    if exact.any():
        changes.append(Change(file, "dropped_duplicate", f"{int(exact.sum())} exact duplicate row(s) removed.",
                              lines=tuple(_lines(df, exact)), count=int(exact.sum())))
        df = df[~exact]
    empty = df["participant_id"].eq("")
    if empty.any():
        p.add(file, "participant_id is empty.", "participant_id", _lines(df, empty), "give every participant an id")
    dup = df["participant_id"].duplicated(keep=False) & ~empty
    if dup.any():
        ids = sorted(df.loc[dup, "participant_id"].unique())[:5]
        p.add(file, f"participant_id must be unique; repeated with different values: {ids}.", "participant_id", _lines(df, dup),
              "keep one row per participant")
    bad_arm = ~df["arm"].isin(meta.arms)
    if bad_arm.any():
        seen = sorted(df.loc[bad_arm, "arm"].unique())[:5]
        declared = ", ".join(f"'{a}'" for a in meta.treatment_arms)
        p.add(
            file,
            f"unknown arm {seen}; {META_FILE} declares control '{meta.control_arm}' and treatment {declared}.",
            "arm",
            _lines(df, bad_arm),
            "use the arm labels of dataset.toml [arms] (labels are case-sensitive)",
        )
    bad_site = df["site"].eq("")
    if bad_site.any():
        p.add(file, "site is empty.", "site", _lines(df, bad_site), "give every participant a site (one label if single-site)")
    folded = df["site"].str.casefold()
    clash = folded.map(df.groupby(folded)["site"].nunique()) > 1
    if clash.any():
        variants = sorted(set(df.loc[clash, "site"]))[:6]
        p.add(file, f"site labels differ only in upper/lower case {variants}: they would be analysed as different sites.", "site",
              _lines(df, clash), "spell each site the same way everywhere")
    withdrawn_mask = _flag(df, file, CONSENT_COLUMN, p) if CONSENT_COLUMN in df.columns else np.zeros(len(df), bool)
    p.raise_if_any()
    withdrawn = set(df.loc[withdrawn_mask, "participant_id"])
    if withdrawn:
        ids = sorted(withdrawn)
        changes.append(Change(file, "withdrew_consent",
                              f"{len(ids)} participant(s) who withdrew consent dropped with all their data: {ids[:8]}{' ...' if len(ids) > 8 else ''}.",
                              CONSENT_COLUMN, tuple(_lines(df, withdrawn_mask)), len(ids)))
        df = df[~withdrawn_mask]
    if CONSENT_COLUMN in df.columns:
        df = df.drop(columns=CONSENT_COLUMN)
    _check_covariates(df, meta, file, p)
    counts = df["arm"].value_counts()
    for arm in meta.arms:
        if counts.get(arm, 0) < 2:
            p.add(
                file,
                f"arm '{arm}' (declared in {META_FILE} [arms]) has {counts.get(arm, 0)} participant(s)"
                f"{' after consent withdrawals' if withdrawn else ''}; every comparison with the control arm needs at least 2 per arm.",
                "arm",
                _lines(df, df["arm"].eq(arm)),
                f"check the arm labels, or remove '{arm}' from [arms] of {META_FILE} to analyse the other arms",
            )
    p.raise_if_any()
    return df, withdrawn


def _check_covariates(df: pd.DataFrame, meta: DatasetMeta, file: str, p: ProblemList) -> None:
    """The covariates declared under [covariates] of dataset.toml, over the analysed participants (after consent
    withdrawals): the column exists; no value is missing (the models do not impute covariates); a continuous one is
    numeric and varies; a categorical one has at least two levels, spelt consistently."""
    where = f"[covariates] of {META_FILE}"
    for name, kind in meta.covariates.items():
        if name not in df.columns:
            others = [c for c in df.columns if c not in ("participant_id", "arm", "site")]
            guess = _closest(name, others)
            p.add(file, f"covariate '{name}' is declared in {where} but is not a column of {file} (its other columns: {others})."
                  + (f" Probably '{guess}'." if guess else ""), name, (1,),
                  f"add the column '{name}' to {file}, or correct or remove '{name}' in {where} (names are case-sensitive)")
            continue
        cells = df[name]
        missing = (cells.eq("") | cells.str.lower().isin(NA_WORDS)).to_numpy()
        if missing.any():
            p.add(file, f"covariate '{name}' is missing for {int(missing.sum())} participant(s) (an empty or NA cell); "
                  "the models adjust for a covariate only when every participant has it (missing covariates are not imputed).",
                  name, _lines(df, missing),
                  f"fill in the values, or remove '{name}' from {where} to analyse without it")
        present = cells[~missing]
        if kind == "continuous":
            values, bad = _parse_numbers(present)
            if bad.any():
                seen = sorted(set(present[bad]))[:4]
                fix = _number_fix(present[bad])
                if not present[bad].str.contains(r"\d", regex=True).any():
                    fix = f"{fix}; or, if the column holds labels, declare it {name} = \"categorical\" in {where}"
                p.add(file, f"covariate '{name}' is declared continuous but is not a number (e.g. {seen}).", name,
                      _lines(present, bad), fix)
            elif len(values) > 1 and np.ptp(values.to_numpy()) == 0:
                p.add(file, f"continuous covariate '{name}' has the same value ({_num(values.iloc[0])}) for every participant: "
                      "it cannot be scaled and adjusts for nothing.", name, _lines(df, ~missing),
                      f"check the column, or remove '{name}' from {where}")
        else:
            levels = sorted(set(present))
            if len(present) and len(levels) < 2:
                p.add(file, f"categorical covariate '{name}' has one level ({levels[0]!r}) among the analysed participants: "
                      "it adjusts for nothing.", name, _lines(df, ~missing),
                      f"check the column, or remove '{name}' from {where}")
            folded = present.str.casefold()
            clash = folded.map(present.groupby(folded).nunique()) > 1
            if clash.any():
                variants = sorted(set(present[clash]))[:6]
                p.add(file, f"levels of covariate '{name}' differ only in upper/lower case {variants}: they would be analysed "
                      "as different levels.", name, _lines(present, clash.to_numpy()), "spell each level the same way everywhere")


def _extra_columns(df, file, expected, changes) -> None:
    extra = [c for c in df.columns if c not in expected]
    if extra:
        changes.append(Change(file, "ignored_columns", f"column(s) {extra} are not used and were ignored.", count=len(extra)))


def _load_visits(folder: Path, meta: DatasetMeta, ids: set[str], withdrawn: set[str], limit,
                 changes: list) -> tuple[pd.DataFrame, pd.Series | None]:
    """The attended visits (participant_id, week, score) and, with an off_treatment column, each participant's first
    week off treatment (`_off_treatment`; None without the column)."""
    file = VISITS_FILE
    out = meta.outcome
    df = read_csv_strict(folder / file, ["participant_id", "week", out], limit, changes)
    _extra_columns(df, file, ["participant_id", "week", out, OFF_TREATMENT_COLUMN], changes)
    df = _drop_withdrawn(df, file, withdrawn, changes)
    p = ProblemList()
    _check_ids(df, file, ids, p)
    weeks, dist = _parse_weeks(df, file, meta.weeks, p, "scheduled visit weeks", meta, changes)
    score, nonnum = _parse_numbers(df[out])
    _not_number(df, file, out, nonnum, p, f"{meta.outcome_label} score")
    rng = score.notna().to_numpy() & ((score < meta.score_min) | (score > meta.score_max)).to_numpy()
    if rng.any():
        p.add(
            file,
            f"{meta.outcome_label} score outside its valid range {meta.score_min:g}-{meta.score_max:g} (e.g. {sorted(set(score[rng]))[:4]}).",
            out,
            _lines(df, rng),
            f"correct the scores, or fix [outcome] min/max in {META_FILE} if the scale differs",
        )
    if meta.integer_scores:
        frac = score.notna().to_numpy() & (score.to_numpy() % 1 != 0)
        if frac.any():
            p.add(file, f"{meta.outcome_label} is an integer scale but the score has a fraction.", out, _lines(df, frac),
                  "set integer = false under [outcome] if fractional scores are intended")
    p.raise_if_any()
    df = df.assign(raw_week=df["week"], week=weeks.astype(int), score=score)  # raw_week: exact duplicates are judged on the text
    df = _dedupe(df, file, ["participant_id", "week"], dist, p, changes)
    p.raise_if_any()
    blank = df["score"].isna()
    if blank.any():
        changes.append(Change(file, "missed_visit", f"{int(blank.sum())} row(s) with an empty {meta.outcome_label} score treated as missed visits.",
                              out, tuple(_lines(df, blank)), int(blank.sum())))
    off = _off_treatment(df, file, meta, p) if OFF_TREATMENT_COLUMN in df.columns else None
    df = df[~blank]
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
    return df[["participant_id", "week", "score"]], off


def _off_treatment(df: pd.DataFrame, file: str, meta: DatasetMeta, p: ProblemList) -> pd.DataFrame:
    """The off_treatment column of visits.csv (after duplicates are resolved, missed visits included): per participant the
    first week off treatment, NaN when never. Accepted: 1/0, true/false, yes/no; blank at baseline is 0, and blank at a
    missed visit (empty score) says nothing. Refused: another value, blank at an attended post-baseline visit, the baseline
    marked off, and a visit marked on treatment after one marked off (a stop of the randomised treatment is for good)."""
    col = OFF_TREATMENT_COLUMN
    text = df[col].str.lower()
    blank = text.eq("").to_numpy()
    base = (df["week"] == meta.weeks[0]).to_numpy()
    attended = df["score"].notna().to_numpy()
    bad = ~text.isin(TRUE_WORDS | FALSE_WORDS).to_numpy()
    if bad.any():
        na = text[bad].isin(NA_WORDS).any()
        p.add(file, f"{col} must be 1 (off treatment) or 0 (on treatment), got {sorted(set(df.loc[bad, col]))[:4]}.", col, _lines(df, bad),
              "write 1 from the first visit after the participant stopped the randomised treatment, 0 before"
              + ("; leave the cell empty only at a missed visit, not NA" if na else " (true/false and yes/no are read too)"))
    unknown = blank & attended & ~base
    if unknown.any():
        p.add(file, f"{col} is empty at an attended post-baseline visit; whether the participant was still on the randomised "
              "treatment defines the treatment-policy analysis.", col, _lines(df, unknown),
              "write 1 if the participant had stopped the randomised treatment before this visit, 0 if not")
    off = text.isin(TRUE_WORDS).to_numpy() & ~bad
    if (off & base).any():
        p.add(file, f"{col} is 1 at the baseline visit (week {meta.weeks[0]}), which comes before the randomised treatment starts.",
              col, _lines(df, off & base), "write 0 (or leave empty) at baseline; mark the visits after the treatment stopped")
    known = ~blank & ~bad
    frame = pd.DataFrame({"participant_id": df["participant_id"], "week": df["week"], "off": off}, index=df.index)[known]
    first = frame[frame["off"]].groupby("participant_id")["week"].min()
    back = frame["week"] > frame["participant_id"].map(first)
    back &= ~frame["off"]
    if back.any():
        who = sorted(set(frame.loc[back, "participant_id"]))
        p.add(file, f"{col} is 0 at a visit after one marked 1 (participant(s) {who[:6]}{' ...' if len(who) > 6 else ''}); the "
              "analysis takes a stop of the randomised treatment before its planned end as permanent (treatment policy: every later "
              "visit counts as after discontinuation, even if the treatment was resumed).", col, _lines(frame, back.to_numpy()),
              "write 1 at every visit from the first one after the treatment stopped, or correct the flag marked 1")
    return first.astype(float)


def _load_biomarkers(folder: Path, meta: DatasetMeta, ids: set[str], withdrawn: set[str], limit, changes: list) -> pd.DataFrame | None:
    file = BIOMARKERS_FILE
    if not (folder / file).exists():
        return None
    if not meta.marker_units:
        raise DatasetError(
            [Problem(META_FILE, f"{file} is present but [biomarkers.units] is missing.", "biomarkers.units",
                     fix="declare each marker's unit, e.g. il6 = \"pg/mL\"")]
        )
    df = read_csv_strict(folder / file, ["participant_id", "week", "marker", "value"], limit, changes, allow_no_rows=True)
    if df.empty:  # e.g. the biomarker sub-study's results are not in yet: the trial is analysed without them, and says so
        changes.append(Change(file, "no_biomarker_rows",
                              "has a header but no data rows: the trial is analysed without biomarker data "
                              "(models that need biomarkers are refused; remove the file or add its rows)."))
        return None
    _extra_columns(df, file, ["participant_id", "week", "marker", "value", "below_lod", "unit"], changes)
    df = _drop_withdrawn(df, file, withdrawn, changes)
    p = ProblemList()
    _check_ids(df, file, ids, p)
    weeks, dist = _parse_weeks(df, file, meta.biomarker_weeks, p, "biomarker weeks", meta, changes)
    bad_marker = ~df["marker"].isin(meta.marker_units)
    if bad_marker.any():
        seen = sorted(df.loc[bad_marker, "marker"].unique())[:5]
        p.add(file, f"unknown marker {seen}; {META_FILE} declares {sorted(meta.marker_units)}.", "marker",
              _lines(df, bad_marker), "add the marker and its unit to [biomarkers.units] (names are case-sensitive)")
    if "unit" in df.columns:
        expected = df["marker"].map(meta.marker_units)
        wrong = expected.notna() & (df["unit"] != "") & (df["unit"] != expected)
        if wrong.any():
            pairs = sorted({(m, u) for m, u in zip(df.loc[wrong, "marker"], df.loc[wrong, "unit"])})[:4]
            p.add(file, f"unit disagrees with {META_FILE} [biomarkers.units] for (marker, unit) {pairs}.", "unit",
                  _lines(df, wrong), "convert the values to the declared unit, or correct the metadata")
    below = _flag(df, file, "below_lod", p) if "below_lod" in df.columns else np.zeros(len(df), dtype=bool)
    if "below_lod" in df.columns and df["below_lod"].eq("").any():
        empty = df["below_lod"].eq("")
        changes.append(Change(file, "empty_flag", f"{int(empty.sum())} empty below_lod cell(s) read as 0 (value above the detection limit).",
                              "below_lod", tuple(_lines(df, empty)), int(empty.sum())))
    value, nonnum = _parse_numbers(df["value"])
    _not_number(df, file, "value", nonnum, p, "value")
    # Values below the detection limit: take the declared limit when the cell is blank.
    lod = df["marker"].map(meta.detection_limits).astype(float)
    fill = below & value.isna().to_numpy() & lod.notna().to_numpy() & ~nonnum
    value = value.where(~fill, lod)
    if fill.any():
        changes.append(Change(file, "filled_detection_limit",
                              f"{int(fill.sum())} below-detection-limit value(s) left empty set to the limit declared in {META_FILE}.",
                              "value", tuple(_lines(df, fill)), int(fill.sum())))
    no_limit = below & value.isna().to_numpy() & ~nonnum
    if no_limit.any():
        p.add(file, "below_lod is set but neither the value nor a detection limit in dataset.toml gives the limit.",
              "value", _lines(df, no_limit), "add [biomarkers.detection_limit] for the marker")
    blank = value.isna().to_numpy() & ~nonnum & ~no_limit
    if blank.any():
        p.add(file, "value is empty.", "value", _lines(df, blank), "drop rows of samples not taken; mark censored ones with below_lod = 1")
    nonpos = value.notna().to_numpy() & (value.to_numpy() <= 0)
    if nonpos.any():
        p.add(file, f"biomarker value must be positive (it is analysed on the log scale), got {sorted(set(value[nonpos]))[:4]}.",
              "value", _lines(df, nonpos), "mark results under the assay's detection limit with below_lod = 1 instead of 0")
    p.raise_if_any()
    df = df.assign(raw_week=df["week"], week=weeks.astype(int), value=value.astype(float), below_lod=below)
    df = _dedupe(df, file, ["participant_id", "week", "marker"], dist, p, changes)
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


def _covariates(df: pd.DataFrame, meta: DatasetMeta) -> dict[str, np.ndarray]:
    """Baseline covariates: those declared in [covariates] of dataset.toml as validated (`_check_covariates`), a
    continuous one as numbers, a categorical one as its labels (text); any other column as read (numeric columns
    numeric, others text), kept with the data but not used by the models."""
    out = {}
    for col in df.columns:
        if col in ("participant_id", "arm", "site"):
            continue
        kind = meta.covariates.get(col)
        if kind == "categorical":
            out[col] = df[col].to_numpy(dtype=str)
            continue
        nums, bad = _parse_numbers(df[col])
        out[col] = nums.to_numpy() if kind == "continuous" or not bad.any() else df[col].to_numpy(dtype=str)
    return out


def load_dataset(folder: str | Path, max_file_bytes: int | None = None) -> xr.Dataset:
    """Validate a dataset folder and return it as one xarray Dataset.

    Dims: participant, week (the scheduled visit weeks), and when biomarkers are present,
    marker and biomarker_week. With an off_treatment column in visits.csv, `off_treatment` (participant x week, int8)
    is 1 at every week from the participant's first visit after stopping the randomised treatment early, else 0. Raises DatasetError listing every broken rule. What the loader
    accepts but alters (duplicates removed, consent withdrawals, missed visits, remapped weeks)
    is listed in `ds.attrs["changes"]` (JSON; read it with `changes_of(ds)`).
    `max_file_bytes` overrides the size guard (default: $DEPTRIAL_MAX_FILE_BYTES or 200 MB).
    """
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError([Problem(str(folder), "does not exist.", fix="--data takes a dataset folder (see README, 'Data interface')")])
    if not folder.is_dir():
        raise DatasetError([Problem(str(folder), "is not a folder.", fix="--data takes a dataset folder (see README, 'Data interface')")])
    limit = max_file_bytes
    meta = read_meta(folder, limit)
    changes: list[Change] = []
    parts, withdrawn = _load_participants(folder, meta, limit, changes)
    ids = set(parts["participant_id"])
    visits, off_from = _load_visits(folder, meta, ids, withdrawn, limit, changes)
    bio = _load_biomarkers(folder, meta, ids, withdrawn, limit, changes)

    pid = parts["participant_id"].to_numpy(dtype=str)
    index = {p: i for i, p in enumerate(pid)}
    weeks = np.asarray(meta.weeks)
    widx = {w: j for j, w in enumerate(weeks)}
    score = np.full((len(pid), len(weeks)), np.nan)
    score[visits["participant_id"].map(index).to_numpy(), visits["week"].map(widx).to_numpy()] = visits["score"].to_numpy()

    ds = xr.Dataset(
        {
            "arm": ("participant", parts["arm"].to_numpy(dtype=str)),
            # 0 for the control arm, a for the a-th active arm of dataset.toml (meta.arms[a])
            "arm_index": ("participant", parts["arm"].map({a: i for i, a in enumerate(meta.arms)}).to_numpy().astype(np.int8)),
            "site": ("participant", parts["site"].to_numpy(dtype=str)),
            "score": (("participant", "week"), score),
        },
        coords={"participant": pid, "week": weeks},
    )
    for name, values in _covariates(parts, meta).items():
        ds[f"covariate_{name}"] = ("participant", values)
    if off_from is not None:  # 1 from the participant's first visit after stopping the randomised treatment early
        first = off_from.reindex(pid).to_numpy(dtype=float)
        ds["off_treatment"] = (("participant", "week"), (weeks[None, :] >= first[:, None]).astype(np.int8))
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
        changes=json.dumps([c.to_dict() for c in changes]),
    )
    return ds


def changes_of(ds: xr.Dataset) -> list[dict]:
    """What the loader accepted but altered, one dict per change (file, action, detail, lines, count, text)."""
    return json.loads(ds.attrs.get("changes", "[]"))


def meta_of(ds: xr.Dataset) -> DatasetMeta:
    """The DatasetMeta stored on a loaded Dataset."""
    return DatasetMeta.from_dict(json.loads(ds.attrs["meta"]))
