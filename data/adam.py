"""CDISC ADaM in: an ADSL, a BDS dataset of the outcome (ADQS, ADEFF, ...) and optionally an ADLB-style dataset of
biomarkers are CONVERTED to the project's dataset folder (docs/data.md), which the normal loader (data.load_dataset)
then validates, so every rule of the folder format still applies (docs/adam.md).

    from data.adam import AdamOptions, load_adam
    ds, ice = load_adam(AdamOptions("adsl.xpt", "adqs.xpt", param="MADRS", ice_strategy={"*": "MAR"}))

    python -m data.adam adsl.xpt adqs.xpt --param MADRS --out my_trial     # write the folder, to see what was read

The rules (each refusal a DatasetError naming the file, variable, subjects or records, why and the fix):
- participants: the ADSL records with the population flag (ITTFL) = "Y" in an analysed arm (TRT01P); the control arm is
  `reference` (default: the one arm whose name contains "placebo"); an arm with no participants after the flags is
  refused; ADSL values such as "Screen Failure" are not arms;
- outcome records: PARAMCD = param; records derived by imputation (DTYPE not blank: LOCF, WOCF, BOCF, ...) and records
  without ANL01FL = "Y" (when the variable exists; the baseline record, ABLFL = "Y", is kept) are excluded and counted
  per arm and visit; a record without AVAL is a missed visit; the baseline is the ABLFL = "Y" record (else the week-0
  visit); weeks come from AVISIT ("Baseline", "Week 6", "Day 1"), a declared visit map, or AVISITN; several analysed
  records for one participant and week are refused;
- the scale from PARAMCD/PARAM (KNOWN_SCALES), else `scale`; biomarkers and intercurrent events: data/adam_parts.py.

The conversion itself is data/adam_convert.py; the options and the [adam] table data/adam_options.py; reading the
files data/adam_files.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import xarray as xr

from .adam_convert import ADAM_NOTE, KNOWN_SCALES, AdamTrial, _Conversion, _converted, parse_visit, recognise_scale
from .adam_files import number_text
from .adam_options import AdamOptions, add_adam_arguments, options_from_args, resolve_options
from .atomic import OutputBusy, locked_output
from .errors import DatasetError
from .ice import ICE_FILE, IceTable, load_ice
from .meta import META_FILE
from .schema import BIOMARKERS_FILE, PARTICIPANTS_FILE, VISITS_FILE, changes_of, load_dataset

__all__ = ["ADAM_NOTE", "KNOWN_SCALES", "AdamOptions", "AdamTrial", "add_adam_arguments", "load_adam", "options_from_args",
           "parse_visit", "read_adam", "recognise_scale", "write_files", "write_folder"]


def read_adam(options: AdamOptions, max_file_bytes: int | None = None, *, intercurrent_events: bool = True) -> AdamTrial:
    """Convert the ADaM datasets of `options` (completed by an [adam] table beside the ADSL file) to the folder format.
    DatasetError naming the file, variable, subjects or records, why and the fix for anything the conversion refuses.
    intercurrent_events  False: no ice.csv even when a strategy map is given (the ADSL's end-of-treatment variables are
                         then not read: a fit without the sensitivity analyses does not need them)."""
    return _Conversion(resolve_options(options), max_file_bytes, intercurrent_events).run()


# ------------------------------------------------------------------ the folder


def write_files(trial: AdamTrial, folder: Path) -> None:
    """Write the folder's files into an existing folder (participants.csv, visits.csv, dataset.toml, and biomarkers.csv,
    ice.csv when there are biomarkers or intercurrent events; adam.json: the files read and what was excluded)."""
    folder = Path(folder)
    (folder / META_FILE).write_text(trial.toml, encoding="utf-8")
    _csv(trial.participants, folder / PARTICIPANTS_FILE)
    _csv(trial.visits, folder / VISITS_FILE)
    if trial.biomarkers is not None:
        _csv(trial.biomarkers, folder / BIOMARKERS_FILE)
    if trial.ice is not None:
        _csv(trial.ice, folder / ICE_FILE)
    note = {"source": trial.source, "excluded": trial.excluded, "changes": [c.to_dict() for c in trial.changes]}
    (folder / ADAM_NOTE).write_text(json.dumps(note, indent=1) + "\n", encoding="utf-8")


def _csv(frame: pd.DataFrame, path: Path) -> None:
    text = frame.copy()
    for col in text.columns:
        if pd.api.types.is_numeric_dtype(text[col]) and not pd.api.types.is_bool_dtype(text[col]):
            text[col] = [number_text(v) for v in text[col].to_numpy(dtype=float)]
        elif pd.api.types.is_bool_dtype(text[col]):
            text[col] = text[col].astype(int).astype(str)
    text.to_csv(path, index=False, lineterminator="\n")


def write_folder(trial: AdamTrial, out: str | Path, force: bool = False) -> Path:
    """Write the converted trial as a dataset folder at `out`, atomically (a temporary sibling renamed into place; nothing is
    left on error), after checking it with the project's loader. An existing non-empty `out` is refused unless `force`."""
    out = Path(out)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; choose another --out or pass --force to replace it")
    with locked_output(out, overwrite=out.exists()) as tmp:
        write_files(trial, tmp)
        try:
            ds = load_dataset(tmp)
            if trial.ice is not None:
                load_ice(tmp / ICE_FILE, ds)
        except DatasetError as exc:
            raise _converted(exc, trial.options) from None
    return out


def load_adam(options: AdamOptions, max_file_bytes: int | None = None, *,
              intercurrent_events: bool = True) -> tuple[xr.Dataset, IceTable | None]:
    """Read ADaM datasets into the project's validated Dataset (as data.load_dataset returns it) and, when an intercurrent-event
    strategy map is given, the intercurrent events as an IceTable (else None).

    The conversion is written to a temporary folder and loaded by data.load_dataset; ds.attrs["source"] then names the ADaM
    files and ds.attrs["changes"] lists what the conversion excluded (derived records, records without ANL01FL = 'Y',
    participants outside the population ...) before the loader's own changes. ds.attrs["adam"] holds the exclusions as
    JSON (file, rule, value, arm, visit, count). intercurrent_events: as for `read_adam`."""
    trial = read_adam(options, max_file_bytes, intercurrent_events=intercurrent_events)
    with tempfile.TemporaryDirectory(prefix="deptrial-adam-") as tmp:
        folder = Path(tmp) / "trial"
        folder.mkdir()
        write_files(trial, folder)
        try:
            ds = load_dataset(folder, max_file_bytes)
            ice = load_ice(folder / ICE_FILE, ds) if trial.ice is not None else None
        except DatasetError as exc:
            raise _converted(exc, trial.options) from None
    ds.attrs["source"] = trial.source
    ds.attrs["changes"] = json.dumps([c.to_dict() for c in trial.changes] + changes_of(ds))
    ds.attrs["adam"] = json.dumps({"excluded": trial.excluded})
    if ice is not None:
        o = trial.options
        ice = replace(ice, source=f"{o.adsl.name} ({o.role('eotstt')}, {o.role('dctreas')})")
    return ds, ice


def main(argv=None) -> int:
    """python -m data.adam ADSL BDS --param PARAMCD --out FOLDER [--force]: write the folder the ADaM files convert to."""
    ap = argparse.ArgumentParser(prog="python -m data.adam", description="Convert CDISC ADaM datasets to a dataset folder "
                                 "(docs/data.md) and say what was read and excluded (docs/adam.md).")
    ap.add_argument("adsl", type=Path, help="the subject-level dataset (ADSL)")
    ap.add_argument("bds", type=Path, help="the BDS dataset of the outcome (e.g. ADQS)")
    add_adam_arguments(ap, files=False)
    ap.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    ap.add_argument("--force", action="store_true", help="replace an existing folder")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        trial = read_adam(options_from_args(args))
        write_folder(trial, args.out, force=args.force)
    except (ValueError, FileExistsError, OutputBusy) as exc:  # DatasetError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(trial.summary())
    files = [PARTICIPANTS_FILE, VISITS_FILE] + ([BIOMARKERS_FILE] if trial.biomarkers is not None else []) + \
        ([ICE_FILE] if trial.ice is not None else [])
    print(f"wrote {args.out}/ ({META_FILE}, {', '.join(files)}, {ADAM_NOTE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
