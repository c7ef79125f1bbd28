"""The generator side of ADaM: a project dataset folder (data/default, data/dose, any synthetic trial) written as CDISC ADaM
SAS transport files (version 5, the format regulators receive), with a dataset.toml whose [adam] table lets
`python fit.py --adam DIR/adsl.xpt DIR/adqs.xpt` read them with no other option (docs/adam.md).

    python -m data.adam_export data/default --out data/adam_trials/default

Files:
    adsl.xpt  one record per subject: STUDYID, USUBJID, SUBJID, SITEID, TRT01P, TRT01PN, ITTFL, FASFL, the covariates (AGE,
              SEX, ...), TRTSDT, TRTEDT, EOTSTT, DCTREAS, EOSSTT, DCSREAS; and `screen_failures` screen-failure subjects
              (TRT01P "Screen Failure", ITTFL "N") who have no other records
    adqs.xpt  the outcome (PARAMCD from the outcome's name, e.g. MADRS): one record per observed visit (AVISIT "Baseline",
              "Week 2", ..., "Week 16 (Follow-up)" after the treatment end), AVISITN, ADT, ADY, AVAL, BASE, CHG, ABLFL,
              ANL01FL, DTYPE, TRTP (and ONTRTFL with off_treatment flags, below); after a participant's last visit, LOCF
              records (DTYPE "LOCF", or "BOCF" when only the baseline was seen) for the missed scheduled visits; and a few
              unscheduled visits without ANL01FL
    adlb.xpt  the biomarkers (PARAMCD IL6, CRP, BDNF): AVAL, AVALC ("<0.7" below the limit), AVALU, LLOQ, AVISIT, AVISITN

Everything is deterministic: the study starts on START and participant i takes the first dose 3 x i days later; the
visit of week w is on day 7w + 1; a participant whose last visit is before the treatment end discontinued treatment
3 days after it, for a reason (REASONS) chosen in turn among those who left the study. The files' creation stamps are
fixed (XPT_STAMP), so the same folder gives the same bytes.

A folder with visits.csv's off_treatment column (retrieved dropouts) is written so that data/adam.py reads the same flags
back (docs/adam.md): a participant flagged off treatment discontinued treatment (EOTSTT, a DCTREAS in turn), the last dose
TRTEDT 3 days after the visit before the first one off treatment; one never flagged who left before the treatment end
discontinued too, TRTEDT empty (the folder does not say when: their missed visits stay on treatment); the others completed
it. ONTRTFL is "Y" on a post-baseline record whose visit's target day (7 x week after TRTSDT; an unscheduled visit's own
day) is not after the last dose (without TRTEDT: not after the end of treatment), blank otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .adam import recognise_scale
from .adam_files import number_text
from .adam_options import SAS_NAME
from .atomic import OutputBusy, locked_output
from .errors import DatasetError
from .meta import META_FILE, _key
from .schema import load_dataset, meta_of

START = dt.date(2024, 1, 8)  # the first participant's first dose
REASONS = ("ADVERSE EVENT", "LACK OF EFFICACY", "WITHDRAWAL BY SUBJECT")
XPT_STAMP = b"01JAN24:00:00:00"  # the transport files' creation and modification stamps
_STAMP = re.compile(rb"\d\d[A-Z]{3}\d\d:\d\d:\d\d:\d\d")
ADSL_END = ("TRTSDT", "TRTEDT", "EOTSTT", "DCTREAS", "EOSSTT", "DCSREAS")
UNSCHEDULED_EVERY = 20  # every 20th participant (from the 8th) has an unscheduled visit, not flagged for analysis

LABELS = {
    "STUDYID": "Study Identifier", "USUBJID": "Unique Subject Identifier", "SUBJID": "Subject Identifier for the Study",
    "SITEID": "Study Site Identifier", "TRT01P": "Planned Treatment for Period 01", "TRT01PN": "Planned Treatment for Period 01 (N)",
    "ITTFL": "Intent-To-Treat Population Flag", "FASFL": "Full Analysis Set Population Flag", "AGE": "Age", "SEX": "Sex",
    "TRTSDT": "Date of First Exposure to Treatment", "TRTEDT": "Date of Last Exposure to Treatment",
    "EOTSTT": "End of Treatment Status", "DCTREAS": "Reason for Discontinuation of Treatment", "EOSSTT": "End of Study Status",
    "DCSREAS": "Reason for Discontinuation from Study", "TRTP": "Planned Treatment", "PARAMCD": "Parameter Code",
    "PARAM": "Parameter", "AVISIT": "Analysis Visit", "AVISITN": "Analysis Visit (N)", "ADT": "Analysis Date",
    "ADY": "Analysis Relative Day", "AVAL": "Analysis Value", "AVALC": "Analysis Value (C)", "AVALU": "Analysis Value Unit",
    "LLOQ": "Lower Limit of Quantitation", "BASE": "Baseline Value", "CHG": "Change from Baseline",
    "ABLFL": "Baseline Record Flag", "ANL01FL": "Analysis Flag 01", "DTYPE": "Derivation Type",
    "ONTRTFL": "On Treatment Record Flag",
}


def visit_label(week: int, treatment_end: int) -> str:
    if week == 0:
        return "Baseline"
    return f"Week {week}" + (" (Follow-up)" if week > treatment_end else "")


def _study_id(folder: Path) -> str:
    return re.sub(r"[^A-Z0-9]", "", folder.resolve().name.upper())[:12] or "STUDY"


def adam_tables(folder: str | Path, studyid: str | None = None, screen_failures: int = 2) -> tuple[dict[str, pd.DataFrame], str]:
    """The ADaM datasets of a dataset folder ({"adsl": ..., "adqs": ..., "adlb": ... when it has biomarkers}) and the
    dataset.toml text that reads them back. ValueError for a covariate name that is not a SAS variable name."""
    folder = Path(folder)
    ds = load_dataset(folder)
    meta = meta_of(ds)
    study = studyid or _study_id(folder)
    pids = [str(p) for p in ds["participant"].values]
    arms = [str(a) for a in ds["arm"].values]
    weeks = [int(w) for w in ds["week"].values]
    tend, last_week = meta.treatment_end, weeks[-1]
    score = ds["score"].values
    n = len(pids)
    usubjid = [f"{study}-{p}" for p in pids]
    starts = [START + dt.timedelta(days=3 * i) for i in range(n)]
    last = [weeks[np.flatnonzero(np.isfinite(row))[-1]] for row in score]
    left = [w < last_week for w in last]
    reason, k = [], 0
    for gone in left:
        reason.append(REASONS[k % len(REASONS)] if gone else "")
        k += gone
    stopped = [w < tend for w in last]
    last_dose = [7 * w + 3 if stop else 7 * tend for w, stop in zip(last, stopped)]  # days after the first dose
    treatment_reason = [r if stop else "" for r, stop in zip(reason, stopped)]
    off = ds["off_treatment"].values.astype(bool) if "off_treatment" in ds else None
    if off is not None:  # the treatment status of the folder (module docstring)
        last_dose, treatment_reason, stopped = _treatment_end(off, weeks, tend, last, reason)
    adsl = {
        "STUDYID": [study] * n, "USUBJID": usubjid, "SUBJID": pids, "SITEID": [str(s) for s in ds["site"].values],
        "TRT01P": arms, "TRT01PN": [float(a) for a in ds["arm_index"].values], "ITTFL": ["Y"] * n, "FASFL": ["Y"] * n,
    }
    covariates = [v for v in ds.data_vars if v.startswith("covariate_")]
    for var in covariates:
        name = var[len("covariate_"):].upper()
        if not SAS_NAME.match(name) or len(name) > 8 or name in adsl or name in ADSL_END:
            raise ValueError(f"covariate '{var[len('covariate_'):]}' cannot be an ADSL variable name (8 characters at most, letters, "
                             "digits and _, not a standard variable)")
        values = ds[var].values
        adsl[name] = [float(v) for v in values] if values.dtype.kind in "fiu" else [str(v) for v in values]
    adsl.update({
        "TRTSDT": starts,
        "TRTEDT": [None if day is None else s + dt.timedelta(days=day) for s, day in zip(starts, last_dose)],
        "EOTSTT": ["DISCONTINUED" if stop else "COMPLETED" for stop in stopped],
        "DCTREAS": treatment_reason,
        "EOSSTT": ["DISCONTINUED" if gone else "COMPLETED" for gone in left],
        "DCSREAS": reason,
    })
    adsl = pd.DataFrame(adsl)
    if screen_failures:
        failed = pd.DataFrame({c: [np.nan if adsl[c].dtype.kind == "f" else (None if c in ("TRTSDT", "TRTEDT") else "")] * screen_failures
                               for c in adsl.columns})
        failed["STUDYID"] = study
        failed["SUBJID"] = [f"SF{j + 1:03d}" for j in range(screen_failures)]
        failed["USUBJID"] = [f"{study}-SF{j + 1:03d}" for j in range(screen_failures)]
        failed["SITEID"] = adsl["SITEID"].iloc[0]
        failed["TRT01P"] = "Screen Failure"
        failed["ITTFL"] = failed["FASFL"] = "N"
        adsl = pd.concat([adsl, failed], ignore_index=True)

    paramcd = re.sub(r"[^A-Z0-9]", "", meta.outcome.upper())[:8]
    param = f"{meta.outcome_label} Total Score"
    rows = []
    # ONTRTFL (with the folder's off_treatment only): 'Y' on a post-baseline record whose visit's target day is not after the
    # last dose (TRTEDT; when that is not known, the end of treatment), blank at baseline and after the last dose
    on_until = [7 * tend if day is None else day for day in last_dose]
    for i in range(n):
        seen = np.isfinite(score[i])
        base = score[i, 0]
        last_j = int(np.flatnonzero(seen)[-1])
        flag = (lambda days, i=i: "Y" if 0 < days <= on_until[i] else "") if off is not None else None
        for j, w in enumerate(weeks):
            common = {"USUBJID": usubjid[i], "TRTP": arms[i], "AVISIT": visit_label(w, tend), "AVISITN": float(w), "BASE": base}
            if seen[j]:
                value, day, dtype = score[i, j], 7 * w, ""
            elif j > last_j:  # after the last visit: carried forward (from the baseline: BOCF)
                value, day, dtype = score[i, last_j], 7 * weeks[last_j], "LOCF" if last_j > 0 else "BOCF"
            else:
                continue
            rows.append({**common, "ADT": starts[i] + dt.timedelta(days=day), "ADY": float(day + 1), "AVAL": value,
                         "CHG": value - base if w > 0 else np.nan, "ABLFL": "Y" if w == 0 and not dtype else "", "ANL01FL": "Y",
                         "DTYPE": dtype, **({"ONTRTFL": flag(7 * w)} if flag else {})})
            if i % UNSCHEDULED_EVERY == 7 and j == 2 and seen[2] and len(weeks) > 3 and seen[3]:
                rows.append({**common, "AVISIT": "Unscheduled", "AVISITN": float(w) + 0.5, "ADT": starts[i] + dt.timedelta(days=day + 4),
                             "ADY": float(day + 5), "AVAL": value, "CHG": value - base, "ABLFL": "", "ANL01FL": "", "DTYPE": "",
                             **({"ONTRTFL": flag(day + 4)} if flag else {})})
    adqs = pd.DataFrame(rows)
    adqs.insert(0, "STUDYID", study)
    adqs.insert(3, "PARAMCD", paramcd)
    adqs.insert(4, "PARAM", param)
    columns = ["STUDYID", "USUBJID", "TRTP", "PARAMCD", "PARAM", "AVISIT", "AVISITN", "ADT", "ADY", "AVAL", "BASE", "CHG", "ABLFL",
               *(["ONTRTFL"] if off is not None else []), "ANL01FL", "DTYPE"]
    tables = {"adsl": adsl, "adqs": adqs[columns]}

    markers = [str(m) for m in ds["marker"].values] if "marker_value" in ds else []
    if markers:
        values, below = ds["marker_value"].values, ds["below_lod"].values
        bweeks = [int(w) for w in ds["biomarker_week"].values]
        rows = []
        for i in range(n):
            for b, w in enumerate(bweeks):
                for m, marker in enumerate(markers):
                    v = values[i, m, b]
                    if not np.isfinite(v):
                        continue
                    unit = meta.marker_units[marker]
                    rows.append({"STUDYID": study, "USUBJID": usubjid[i], "PARAMCD": marker.upper()[:8],
                                 "PARAM": f"{marker.upper()} ({unit})",
                                 "AVISIT": visit_label(w, tend), "AVISITN": float(w), "ADT": starts[i] + dt.timedelta(days=7 * w),
                                 "AVAL": float(v), "AVALC": ("<" if below[i, m, b] else "") + number_text(v), "AVALU": unit,
                                 "LLOQ": meta.detection_limits.get(marker, np.nan), "ABLFL": "Y" if w == 0 else "", "ANL01FL": "Y",
                                 "DTYPE": ""})
        tables["adlb"] = pd.DataFrame(rows)
    return tables, _config(meta, paramcd, markers, ds)


def _treatment_end(off: np.ndarray, weeks: list[int], tend: int, last: list[int], reason: list[str]):
    """With the folder's off_treatment flags (participant x week): per participant the last dose (days after the first dose;
    None when not known), DCTREAS and whether the treatment was discontinued (module docstring)."""
    days, why, stopped = [], [], []
    k = 0
    for i, row in enumerate(off):
        first = np.flatnonzero(row)
        if len(first):  # stopped early: 3 days after the visit before the first one off treatment
            days.append(7 * weeks[first[0] - 1] + 3)
        else:  # on treatment at every visit: to the end of treatment, or left the trial before it (last dose not known)
            days.append(7 * tend if last[i] >= tend else None)
        stopped.append(bool(len(first)) or last[i] < tend)
        if stopped[-1] and not reason[i]:
            why.append(REASONS[k % len(REASONS)])
            k += 1
        else:
            why.append(reason[i] if stopped[-1] else "")
    return days, why, stopped


def _config(meta, paramcd: str, markers: list[str], ds) -> str:
    """The dataset.toml beside the files: title and the [adam] table that reads them back as the folder (the treatment end
    needs no key: the visits after it are labelled follow-up)."""
    def q(s):
        return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def names(items):
        return "[" + ", ".join(q(x) for x in items) + "]"

    declared = [f"{c.upper()}:{kind}" for c, kind in meta.covariates.items()]
    columns = [v[len("covariate_"):] for v in ds.data_vars if v.startswith("covariate_")]
    kept = [c.upper() for c in columns if c not in meta.covariates]
    lines = [f"title = {q(meta.title)}" if meta.title else "", "", "[adam]", f"param = {q(paramcd)}", f"reference = {q(meta.control_arm)}"]
    found = recognise_scale(paramcd)
    if found is None or (found[2], found[3]) != (meta.score_min, meta.score_max):
        lines.append(f"scale = [{number_text(meta.score_min)}, {number_text(meta.score_max)}]")
    if declared:
        lines.append(f"covariates = {names(declared)}")
    if kept:
        lines.append(f"keep = {names(kept)}")
    if markers:
        lines += [f"markers = {names(m.upper() for m in markers)}", 'markers_file = "adlb.xpt"']
    lines += ["", "[adam.variables]", 'participant_id = "SUBJID"  # the participant ids of the CSV folder (USUBJID adds the study)']
    if meta.doses:
        lines += ["", "[adam.doses]", *[f"{_key(a)} = {number_text(d)}" for a, d in meta.doses.items()]]
    return "\n".join(lines).lstrip() + "\n"


def write_xpt(frame: pd.DataFrame, path: Path, name: str, label: str) -> None:
    """One SAS transport file (version 5), with the variables' labels and a fixed creation stamp."""
    import pyreadstat

    frame = frame.copy()
    dates = [c for c in frame.columns if c.endswith("DT")]
    for c in frame.columns:
        if c not in dates and frame[c].dtype.kind not in "fiu":
            frame[c] = frame[c].astype(object).map(lambda v: "" if v is None else str(v))
    pyreadstat.write_xport(frame, str(path), file_label=label, table_name=name, file_format_version=5,
                           column_labels=[LABELS.get(c, c) for c in frame.columns], variable_format={c: "DATE9." for c in dates})
    data = bytearray(path.read_bytes())
    head = bytes(data[:640])
    for m in _STAMP.finditer(head):
        data[m.start():m.end()] = XPT_STAMP
    path.write_bytes(bytes(data))


DATASET_LABELS = {"adsl": "Subject-Level Analysis Dataset", "adqs": "Questionnaire Analysis Dataset",
                  "adlb": "Laboratory Analysis Dataset"}


def write_adam(folder: str | Path, out: str | Path, *, studyid: str | None = None, force: bool = False, screen_failures: int = 2) -> Path:
    """Write the folder's trial as ADaM files at `out` (adsl.xpt, adqs.xpt, adlb.xpt with biomarkers, dataset.toml), atomically.
    FileExistsError for an existing `out` without `force`; DatasetError for a folder the loader refuses."""
    tables, config = adam_tables(folder, studyid, screen_failures)
    out = Path(out)
    with locked_output(out, overwrite=force) as tmp:
        for name, frame in tables.items():
            write_xpt(frame, tmp / f"{name}.xpt", name.upper(), DATASET_LABELS[name])
        (tmp / META_FILE).write_text(config, encoding="utf-8")
    return out


def main(argv=None) -> int:
    """python -m data.adam_export FOLDER --out DIR [--force] [--studyid ID]: a dataset folder as ADaM .xpt files."""
    ap = argparse.ArgumentParser(prog="python -m data.adam_export", description=main.__doc__)
    ap.add_argument("folder", type=Path, help="a dataset folder (docs/data.md)")
    ap.add_argument("--out", type=Path, required=True, help="the folder of the ADaM files")
    ap.add_argument("--studyid", default=None, help="STUDYID (default: the folder's name in capitals)")
    ap.add_argument("--screen-failures", type=int, default=2, help="screen-failure subjects added to the ADSL (default 2)")
    ap.add_argument("--force", action="store_true", help="replace an existing folder")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        write_adam(args.folder, args.out, studyid=args.studyid, force=args.force, screen_failures=args.screen_failures)
    except (DatasetError, ValueError, FileExistsError, OutputBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{p.name} {p.stat().st_size // 1024} kB" for p in sorted(args.out.iterdir()) if p.suffix == ".xpt")
    print(f"wrote {args.out}/ ({sizes}, {META_FILE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
