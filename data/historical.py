"""Historical control-arm results: the input of a meta-analytic-predictive (MAP) prior (maths/map_prior.py).

A CSV with one row per past trial, its control arm at the primary visit:

    study   the trial's name (unique; any text)
    n       participants in the control arm whose change the mean is over (a whole number, at least 2)
    mean    the control arm's mean change from baseline at the primary visit (outcome points)
    sd      the SD of that change across the arm's participants (> 0; not the standard error)

Other columns (e.g. the year, a reference) are ignored and reported as such. Every broken rule is reported
at once, as a DatasetError naming the file, the column, the CSV lines, why and the fix (data/errors.py); a
table of fewer than 2 trials is refused (a between-trial SD needs at least two).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import Change, DatasetError, Problem, ProblemList
from .meta import DatasetMeta
from .schema import NA_WORDS, _lines, _not_number, _parse_numbers, read_csv_strict

HISTORICAL_COLUMNS = ["study", "n", "mean", "sd"]
MIN_TRIALS = 2


@dataclass(frozen=True)
class HistoricalControls:
    """Validated historical control arms, one entry per trial, in the file's order."""

    study: tuple[str, ...]
    n: tuple[int, ...]
    mean: tuple[float, ...]
    sd: tuple[float, ...]
    source: str = "historical.csv"
    changes: tuple[Change, ...] = ()  # what was accepted but ignored (extra columns, empty rows)

    def __len__(self) -> int:
        return len(self.study)

    @property
    def se(self) -> np.ndarray:
        """Each trial's standard error of its mean, sd / sqrt(n)."""
        return np.asarray(self.sd) / np.sqrt(np.asarray(self.n, dtype=float))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"study": list(self.study), "n": list(self.n), "mean": list(self.mean), "sd": list(self.sd)})


def _numbers(df, name, column, what, p: ProblemList, missing_fix: str) -> pd.Series:
    """The column as numbers (NaN where missing or not a number); missing cells (empty or NA) and cells that are not
    numbers are reported."""
    missing = (df[column].eq("") | df[column].str.lower().isin(NA_WORDS)).to_numpy()
    if missing.any():
        p.add(name, f"{what} is missing (an empty or NA cell); every trial needs n, mean and sd.", column, _lines(df, missing),
              f"{missing_fix}, or remove the trial")
    values, bad = _parse_numbers(df[column].where(~missing, ""))
    _not_number(df, name, column, bad, p, what)
    return values


def read_historical(path: str | Path, max_file_bytes: int | None = None) -> HistoricalControls:
    """Read and validate a historical control-arm table (module docstring). Raises DatasetError listing every problem."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError([Problem(str(path), "is a folder, not a CSV file.",
                                    fix="give the CSV of historical control arms (columns study, n, mean, sd)")])
    if not path.exists():
        raise DatasetError([Problem(str(path), "does not exist.", fix="give the path of the historical control-arm CSV "
                                    "(columns study, n, mean, sd; docs/models.md, 'Borrowing from past trials')")])
    name = path.name
    changes: list[Change] = []
    df = read_csv_strict(path, HISTORICAL_COLUMNS, max_file_bytes, changes)
    extra = [c for c in df.columns if c not in HISTORICAL_COLUMNS]
    if extra:
        changes.append(Change(name, "ignored_columns", f"column(s) {extra} are not used and were ignored.", count=len(extra)))
    p = ProblemList()

    study = df["study"]
    empty = study.eq("")
    if empty.any():
        p.add(name, "study is empty.", "study", _lines(df, empty), "give every trial a name")
    twice = study.duplicated(keep=False) & ~empty
    if twice.any():
        seen = sorted(study[twice].unique())[:5]
        p.add(name, f"the same study appears on more than one row {seen}; a trial's control arm is one row.", "study",
              _lines(df, twice), "keep one row per trial (pool a trial's control arms into one mean and SD), or rename "
              "distinct trials")
    folded = study.str.casefold().str.replace(r"\s+", "", regex=True)
    near = (folded.map(study.groupby(folded).nunique()) > 1) & ~empty
    if near.any():
        seen = sorted(study[near].unique())[:5]
        p.add(name, f"study names differ only in upper/lower case or spaces {seen}: the same trial twice?", "study",
              _lines(df, near), "keep one row per trial, or name distinct trials distinctly")

    n = _numbers(df, name, "n", "n", p, "give the number of participants in the control arm")
    ok = n.notna().to_numpy()
    frac = ok & (n.to_numpy() % 1 != 0)
    if frac.any():
        p.add(name, f"n must be a whole number of participants (e.g. {sorted(set(n[frac]))[:4]}).", "n", _lines(df, frac),
              "give the number of participants the mean is over")
    small = ok & ~frac & (n.to_numpy() < 2)
    if small.any():
        p.add(name, f"n must be at least 2 (an SD needs two participants), got {sorted(set(n[small].astype(int)))[:4]}.", "n",
              _lines(df, small), "give the control arm's size, or remove the trial")

    mean = _numbers(df, name, "mean", "mean", p, "give the control arm's mean change from baseline at the primary visit")

    sd = _numbers(df, name, "sd", "sd", p, "give the SD of the change from baseline in the control arm")
    nonpos = sd.notna().to_numpy() & (sd.to_numpy() <= 0)
    if nonpos.any():
        p.add(name, f"sd must be positive, got {sorted(set(sd[nonpos]))[:4]}.", "sd", _lines(df, nonpos),
              "give the SD of the participants' changes (a standard error times sqrt(n) if only the SE is reported)")

    if len(df) < MIN_TRIALS:
        p.add(name, f"has {len(df)} trial(s); a MAP prior needs at least {MIN_TRIALS} (the between-trial SD is "
              "estimated from their spread).", lines=tuple(int(i) for i in df.index),
              fix="add the control arms of other comparable trials, one row each")
    p.raise_if_any()
    return HistoricalControls(
        tuple(str(s) for s in study), tuple(int(v) for v in n), tuple(float(v) for v in mean), tuple(float(v) for v in sd),
        name, tuple(changes),
    )


@dataclass(frozen=True)
class ControlSummary:
    """A trial's control arm at one visit, summarised as historical.csv holds past trials: the participants observed
    there, their mean change from baseline and its SD (observed cases)."""

    arm: str
    week: int
    n: int
    mean: float
    sd: float

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n)


def control_summary(ds, week: int | None = None) -> ControlSummary:
    """The control arm's observed change from baseline at `week` (default: the end of treatment) of a loaded dataset
    (data.load_dataset): participants with both the baseline and that visit, their mean change and its SD.
    Raises ValueError when fewer than 2 control participants were observed there."""
    meta = DatasetMeta.from_dict(json.loads(ds.attrs["meta"]))
    week = meta.treatment_end if week is None else int(week)
    weeks = [int(w) for w in ds["week"].values]
    if week not in weeks or 0 not in weeks:
        raise ValueError(f"week {week} (or the baseline, week 0) is not a scheduled visit of {ds.attrs.get('source', 'the trial')}")
    score = ds["score"].values
    change = score[:, weeks.index(week)] - score[:, weeks.index(0)]
    control = (ds["arm_index"].values == 0) & ~np.isnan(change)
    if control.sum() < 2:
        raise ValueError(f"{ds.attrs.get('source', 'the trial')}: fewer than 2 participants of the control arm "
                         f"({meta.control_arm}) have both the baseline and week {week}")
    x = change[control]
    return ControlSummary(str(meta.control_arm), week, int(control.sum()), float(x.mean()), float(x.std(ddof=1)))


def read_historical_folders(folders, scale: tuple[float, float] | None = None, max_file_bytes: int | None = None) -> HistoricalControls:
    """Historical control arms from trial folders in the project's format (docs/data.md): each trial's control arm at
    its own end of treatment (`control_summary`), named by its dataset title, or its folder name. `scale`: (min, max)
    of the new trial's outcome; a trial on another scale is refused (a MAP prior is on one scale's points).
    Raises DatasetError naming every folder that cannot be used, and why."""
    from .schema import load_dataset

    folders = [Path(f) for f in folders]
    p = ProblemList()
    rows = []
    for folder in folders:
        try:
            ds = load_dataset(folder, max_file_bytes)
        except DatasetError as exc:
            p.items.extend(exc.problems)
            continue
        meta = DatasetMeta.from_dict(json.loads(ds.attrs["meta"]))
        if scale is not None and (meta.score_min, meta.score_max) != tuple(scale):
            p.add(str(folder / "dataset.toml"), f"the outcome {meta.outcome_label} is scored {meta.score_min:g}-{meta.score_max:g}, "
                  f"the new trial's {scale[0]:g}-{scale[1]:g}: a MAP prior is on one scale's points.",
                  fix="use past trials scored on the new trial's scale, or convert them and give a historical.csv")
            continue
        try:
            summary = control_summary(ds)
        except ValueError as exc:
            p.add(str(folder), f"{exc}.", fix="leave the trial out, or give its control arm as a row of a historical.csv")
            continue
        rows.append((meta.title or folder.name, summary))
    names = [r[0] for r in rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        p.add(", ".join(str(f) for f in folders), f"trials {twice} appear more than once.", fix="give each past trial once")
    if len(folders) < MIN_TRIALS:
        p.add(", ".join(str(f) for f in folders), f"{len(folders)} trial folder(s); a MAP prior needs at least {MIN_TRIALS}.",
              fix="add the folders of other comparable trials")
    p.raise_if_any()
    summaries = [r[1] for r in rows]
    return HistoricalControls(tuple(names), tuple(c.n for c in summaries), tuple(c.mean for c in summaries),
                              tuple(c.sd for c in summaries), ", ".join(str(f) for f in folders))


def read_historical_source(paths, scale: tuple[float, float] | None = None, max_file_bytes: int | None = None) -> HistoricalControls:
    """One historical.csv, or two or more trial folders (`read_historical_folders`)."""
    paths = [Path(x) for x in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if len(paths) == 1 and not paths[0].is_dir():
        return read_historical(paths[0], max_file_bytes)
    files = [x for x in paths if not x.is_dir()]
    if files:
        raise DatasetError([Problem(str(files[0]), "is not a trial folder; a historical control is one CSV, or two or more "
                                    "trial folders.", fix="give either the CSV alone, or only trial folders")])
    return read_historical_folders(paths, scale, max_file_bytes)


__all__ = ["HISTORICAL_COLUMNS", "ControlSummary", "HistoricalControls", "control_summary", "read_historical",
           "read_historical_folders", "read_historical_source"]
