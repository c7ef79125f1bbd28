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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import Change, DatasetError, Problem, ProblemList
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


__all__ = ["HISTORICAL_COLUMNS", "HistoricalControls", "read_historical"]
