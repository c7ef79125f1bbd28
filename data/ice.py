"""ice.csv: an optional participant-level table of intercurrent events for the sensitivity analyses.

One row per participant with an intercurrent event (e.g. stopped the study drug, started rescue
medication):

    participant_id   a participant of participants.csv (after consent withdrawals)
    week             the first scheduled post-baseline visit the event affects
    strategy         how the visits from that week on are handled: MAR, J2R, CR or CIR
                     (missing at random, jump to reference, copy reference, copy increments in
                     reference; diagnostics/sensitivity.py has the maths)

Other columns (e.g. a reason) are ignored. A participant not listed keeps the strategy of the
analysis for the visits after their last observed one. Every broken rule is reported at once, as a
DatasetError naming the file, column, CSV lines and the fix (data/errors.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .errors import DatasetError, Problem, ProblemList
from .schema import _lines, meta_of, read_csv_strict, week_column

ICE_FILE = "ice.csv"
ICE_COLUMNS = ["participant_id", "week", "strategy"]
ICE_STRATEGIES = ("MAR", "J2R", "CR", "CIR")


@dataclass(frozen=True)
class IceTable:
    """Validated intercurrent events: per listed participant, the first affected week and the strategy."""

    participant_id: tuple[str, ...] = ()
    week: tuple[int, ...] = ()
    strategy: tuple[str, ...] = ()
    source: str = ICE_FILE

    def __len__(self) -> int:
        return len(self.participant_id)

    def by_participant(self) -> dict[str, tuple[int, str]]:
        """participant_id -> (week of the event, strategy)."""
        return {p: (w, s) for p, w, s in zip(self.participant_id, self.week, self.strategy)}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"participant_id": list(self.participant_id), "week": list(self.week), "strategy": list(self.strategy)})


def load_ice(path: str | Path, ds: xr.Dataset, max_file_bytes: int | None = None) -> IceTable | None:
    """Read and validate an intercurrent-event table against a loaded dataset (`data.load_dataset`).

    `path` is the file itself, or a dataset folder: then its ice.csv, and None when the folder has
    none (the table is optional). Raises DatasetError listing every problem: unknown participant ids,
    weeks that are not post-baseline scheduled visits, unknown strategies, a participant listed twice.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ICE_FILE
        if not path.exists():
            return None
    name = path.name
    df = read_csv_strict(path, ICE_COLUMNS, max_file_bytes, allow_no_rows=True)
    meta = meta_of(ds)
    known = set(str(p) for p in ds["participant"].values)
    weeks = [int(w) for w in meta.weeks]
    p = ProblemList()

    ids = df["participant_id"]
    empty = ids.eq("")
    if empty.any():
        p.add(name, "participant_id is empty.", "participant_id", _lines(df, empty), "give every row its participant's id")
    unknown = ~ids.isin(known) & ~empty
    if unknown.any():
        seen = sorted(ids[unknown].unique())[:5]
        p.add(name, f"participant_id not among the analysed participants of participants.csv (e.g. {seen}).", "participant_id",
              _lines(df, unknown),
              "correct the id (ids are case-sensitive), or remove the row (participants who withdrew consent are not analysed)")
    twice = ids.duplicated(keep=False) & ~empty
    if twice.any():
        seen = sorted(ids[twice].unique())[:5]
        p.add(name, f"more than one row for the same participant {seen}; the table holds one intercurrent event per participant.",
              "participant_id", _lines(df, twice), "keep the row of the first event that changes how later visits are handled")

    week, ok = week_column(df, name, p, "give the week of the first visit the event affects")
    off = ok & ~week.isin([float(w) for w in weeks]).to_numpy()
    if off.any():
        seen = sorted({float(x) for x in week[off]})[:6]
        shown = [int(x) if x.is_integer() else x for x in seen]
        p.add(name, f"week {shown} is not a scheduled visit week {weeks} of dataset.toml.", "week",
              _lines(df, off), "give the first scheduled visit the event affects (the visit after the event)")
    base = ok & week.eq(float(weeks[0])).to_numpy()
    if base.any():
        p.add(name, f"week {weeks[0]} is the baseline visit, which an event after randomisation cannot affect.", "week", _lines(df, base),
              f"give a post-baseline visit week {weeks[1:]}: the first visit the event affects")

    strategy = df["strategy"]
    case = ~strategy.isin(ICE_STRATEGIES) & strategy.str.upper().isin(ICE_STRATEGIES)
    if case.any():
        seen = sorted(strategy[case].unique())[:5]
        p.add(name, f"strategy {seen} is not written as one of {list(ICE_STRATEGIES)} (names are case-sensitive).", "strategy",
              _lines(df, case), "write the strategy in capitals, e.g. J2R")
    bad = ~strategy.isin(ICE_STRATEGIES) & ~case
    if bad.any():
        seen = sorted(strategy[bad].unique())[:5]
        p.add(name, f"unknown strategy {seen}; one of {list(ICE_STRATEGIES)}.", "strategy", _lines(df, bad),
              "MAR (missing at random), J2R (jump to reference), CR (copy reference) or CIR (copy increments in reference)")
    p.raise_if_any()
    if df.empty:
        return IceTable(source=name)
    return IceTable(tuple(str(x) for x in ids), tuple(int(w) for w in week), tuple(str(s) for s in strategy), name)


def check_ice(ice: IceTable, participants, weeks) -> None:
    """Refuse a validated table used with another trial (ids or weeks the trial does not have)."""
    known = set(str(p) for p in np.asarray(participants))
    missing = sorted(set(ice.participant_id) - known)
    off = sorted(set(ice.week) - set(int(w) for w in np.asarray(weeks)[1:]))
    problems = []
    if missing:
        problems.append(Problem(ice.source, f"participant_id not in the analysed trial (e.g. {missing[:5]}).", "participant_id",
                                fix="read the table against the dataset the fit was made on"))
    if off:
        problems.append(Problem(ice.source, f"week {off} is not a post-baseline visit of the analysed trial.", "week",
                                fix="read the table against the dataset the fit was made on"))
    if problems:
        raise DatasetError(problems)
