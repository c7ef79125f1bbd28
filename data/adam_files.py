"""Reading one ADaM dataset file: SAS transport (.xpt) and .sas7bdat through pyreadstat (ReadStat, the library pandas'
own SAS reader cannot match: it writes .xpt too, and reads value labels and formats), .csv through the project's strict
CSV reader (encoding, separators, field counts: data/schema.py), .parquet through pandas with pyarrow.

A table keeps each record's number in its file (1-based: the n-th observation of a SAS dataset, the n-th data row of
a CSV), so every refusal can name the records. Variable names are upper-cased (SAS names are case-insensitive).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DatasetError, Problem, ProblemList, format_lines
from .meta import max_file_bytes
from .schema import read_csv_strict

READERS = {".xpt": "SAS transport", ".sas7bdat": "SAS dataset", ".csv": "CSV", ".parquet": "Parquet"}
SAS_EPOCH = pd.Timestamp("1960-01-01")
DATE_TEXT_FORMATS = ("%Y-%m-%d", "%d%b%Y", "%Y%m%d", "%d/%m/%Y")


def records_text(records, limit: int = 8) -> str:
    """'records 3, 7, 9 (+12 more)': record numbers of a dataset file."""
    text = format_lines(records, limit)
    return "record" + text[len("line"):] if text else ""


@dataclass
class AdamTable:
    """One ADaM dataset: its frame (upper-case variable names; index: record numbers) and which variables were stored
    as numbers (a CSV stores none: its cells are read as numbers where a role needs them)."""

    path: Path
    frame: pd.DataFrame
    numeric: set[str] = field(default_factory=set)
    dates: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.path.name

    def has(self, var: str) -> bool:
        return var in self.frame.columns

    @property
    def variables(self) -> list[str]:
        return list(self.frame.columns)

    def subset(self, mask) -> "AdamTable":
        return AdamTable(self.path, self.frame[np.asarray(mask, dtype=bool)], self.numeric, self.dates)

    def text(self, var: str) -> pd.Series:
        """A variable as text: numbers without a needless '.0', dates as YYYY-MM-DD, '' for missing."""
        s = self.frame[var]
        if var in self.dates:
            days = self._days(s)
            return pd.Series([(SAS_EPOCH + pd.Timedelta(days=d)).strftime("%Y-%m-%d") if np.isfinite(d) else "" for d in days],
                             index=s.index, dtype=object)
        if var in self.numeric:
            return pd.Series([number_text(v) for v in s.to_numpy(dtype=float)], index=s.index, dtype=object)
        return s

    def numbers(self, var: str, problems: ProblemList, what: str) -> pd.Series:
        """A variable as numbers (NaN: missing); text that is not a number is a problem naming the records."""
        s = self.frame[var]
        if var in self.numeric:
            return s.astype(float)
        values = pd.to_numeric(s.where(s != "", None), errors="coerce").astype(float)
        bad = (s != "") & values.isna()
        if bad.any():
            problems.add(self.name, f"{what} is not a number (e.g. {sorted(set(s[bad]))[:4]}; {records_text(s.index[bad])}).", var,
                         fix=f"{var} must hold numbers")
        return values

    def days(self, var: str, problems: ProblemList) -> pd.Series:
        """A date variable as days since 1960-01-01 (SAS dates; NaN: missing). Text dates: YYYY-MM-DD or 08JAN2024."""
        s = self.frame[var]
        if var in self.dates or var in self.numeric:
            return pd.Series(self._days(s), index=s.index)
        out = pd.Series(np.nan, index=s.index)
        for fmt in DATE_TEXT_FORMATS:
            left = (s != "") & out.isna()
            if not left.any():
                break
            parsed = pd.to_datetime(s[left], format=fmt, errors="coerce")
            ok = parsed.notna()
            out[parsed.index[ok]] = (parsed[ok] - SAS_EPOCH).dt.days.astype(float)
        bad = (s != "") & out.isna()
        if bad.any():
            problems.add(self.name, f"{var} is not a date (e.g. {sorted(set(s[bad]))[:3]}; {records_text(s.index[bad])}).", var,
                         fix="write dates as YYYY-MM-DD (or store them as SAS dates)")
        return out

    @staticmethod
    def _days(s: pd.Series) -> np.ndarray:
        if pd.api.types.is_datetime64_any_dtype(s):
            return ((s - SAS_EPOCH).dt.total_seconds() / 86400.0).to_numpy(dtype=float)
        if pd.api.types.is_numeric_dtype(s):
            return s.to_numpy(dtype=float)  # a SAS date stored without a date format
        out = np.full(len(s), np.nan)
        for i, v in enumerate(s.to_numpy()):
            if isinstance(v, (dt.date, dt.datetime, pd.Timestamp)) and not pd.isna(v):
                out[i] = (pd.Timestamp(v).normalize() - SAS_EPOCH).days
        return out


def number_text(v: float) -> str:
    """A number as the shortest text that reads back to it ('60', not '60.0'); '' for missing."""
    if v is None or not np.isfinite(v):
        return ""
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


def read_table(path: str | Path, what: str, limit: int | None = None) -> AdamTable:
    """Read one ADaM dataset (`what`: ADSL, BDS, ADLB, for the messages). DatasetError naming the file and the fix when it
    is missing, too big, of an unknown kind or unreadable."""
    path = Path(path)
    name = path.name
    kinds = ", ".join(READERS)
    if not path.exists():
        raise DatasetError([Problem(name, f"the {what} dataset does not exist ({path}).",
                                    fix=f"give the path of the {what} dataset ({kinds})")])
    if not path.is_file():
        raise DatasetError([Problem(name, f"the {what} dataset is not a file ({path}).",
                                    fix=f"give the path of the {what} dataset file ({kinds})")])
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise DatasetError([Problem(name, f"the {what} dataset is not a kind of file the ADaM reader knows.",
                                    fix=f"give the dataset as one of {kinds} (from SAS: a transport file written with "
                                    "the XPORT engine, or the .sas7bdat itself)")])
    cap = max_file_bytes(limit)
    if path.stat().st_size > cap:
        raise DatasetError([Problem(name, f"the {what} dataset is {path.stat().st_size} bytes, above the reader's size limit of "
                                    f"{cap} bytes.",
                                    fix="check it is the right file; to read it anyway raise DEPTRIAL_MAX_FILE_BYTES")])
    if suffix == ".csv":
        df = read_csv_strict(path, [], limit)
        df.index = pd.RangeIndex(1, len(df) + 1, name="record")
        return _table(path, df, csv=True)
    try:
        if suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise DatasetError([Problem(name, "is a Parquet file, and reading Parquet needs the pyarrow package, which is not "
                                            "installed.",
                                            fix="pip install pyarrow, or give the dataset as .xpt, .sas7bdat or .csv")]) from None
            df = pd.read_parquet(path)
        else:
            import pyreadstat

            reader = pyreadstat.read_xport if suffix == ".xpt" else pyreadstat.read_sas7bdat
            df, _ = reader(str(path))
    except DatasetError:
        raise
    except Exception as exc:  # the readers raise their own error types for a damaged or mislabelled file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatasetError([Problem(name, f"the {what} dataset could not be read as a {READERS[suffix]} file ({reason}).",
                                    fix=f"check that it is the {what} dataset and a complete {READERS[suffix]} file "
                                    "(export it again, or give it as one of " + kinds + ")")]) from None
    df.index = pd.RangeIndex(1, len(df) + 1, name="record")
    return _table(path, df, csv=False)


def _table(path: Path, df: pd.DataFrame, csv: bool) -> AdamTable:
    upper = [str(c).strip().upper() for c in df.columns]
    clash = sorted({c for c in upper if upper.count(c) > 1})
    if clash:
        raise DatasetError([Problem(path.name, f"has variables whose names differ only in case: {clash}.",
                                    fix="SAS variable names are case-insensitive: rename one of each pair")])
    df = df.set_axis(upper, axis=1)
    numeric, dates, columns = set(), set(), {}
    for c in upper:
        s = df[c]
        if csv:
            columns[c] = s.astype(str).str.strip()
        elif pd.api.types.is_bool_dtype(s):
            columns[c] = s.map({True: "Y", False: "N"}).fillna("").astype(str)
        elif pd.api.types.is_numeric_dtype(s):
            columns[c] = s.astype(float)
            numeric.add(c)
        elif pd.api.types.is_datetime64_any_dtype(s) or s.map(lambda v: isinstance(v, (dt.date, pd.Timestamp))).any():
            columns[c] = s
            dates.add(c)
        else:
            columns[c] = s.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()).astype(object)
    frame = pd.DataFrame(columns, index=df.index)
    return AdamTable(path, frame, numeric, dates)
