"""The optional parts of an ADaM conversion (data/adam.py): biomarkers from an ADLB-style BDS dataset, and intercurrent
events from the ADSL's end-of-treatment variables (docs/adam.md).

Biomarkers: AVAL in the unit AVALU (one unit per marker), the marker named by its PARAMCD in lower case. A result below
the lower limit of quantification is one whose AVALC starts with '<' (e.g. '<0.7') or whose AVAL is below LLOQ; without
an AVALC variable, an AVAL at LLOQ too (the limit itself is the usual stand-in for a result below it). It becomes a
censored value (below_lod = 1) at the limit: the number after '<' in AVALC, else LLOQ. A marker whose LLOQ is one value
for all its records declares it as its detection limit.

Intercurrent events: a participant whose end-of-treatment status (EOTSTT) is neither blank, COMPLETED nor ONGOING
discontinued treatment; the reason (DCTREAS) picks the strategy from the strategy map ('*': any other reason). The
event's week is the first scheduled post-baseline visit after the last dose (TRTEDT): a visit the participant attended
after TRTEDT (by the BDS records' ADT), or a visit not attended whose target day (7 x week + 1, day 1 = TRTSDT) falls
after the last dose's day (TRTEDT - TRTSDT + 1). No scheduled visit after it: no event row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .adam_files import read_table, records_text
from .adam_options import norm_label
from .errors import Change, DatasetError, Problem, ProblemList
from .meta import UNIT_TEXT

ONGOING = ("", "COMPLETED", "ONGOING")


@dataclass
class Markers:
    """biomarkers.csv's rows, the biomarker weeks, each marker's unit and declared detection limit."""

    frame: pd.DataFrame
    weeks: tuple[int, ...]
    units: dict[str, str]
    limits: dict[str, float]


def biomarkers(conv, subj: pd.DataFrame) -> Markers:
    """The biomarkers of the markers file of `conv`'s options (conv: data.adam._Conversion)."""
    o = conv.o
    t = read_table(o.markers, "ADLB", conv.limit)
    wanted = list(dict.fromkeys(o.marker_params or ()))
    if not wanted:
        raise DatasetError([Problem(t.name, "is given for biomarkers but no PARAMCD is named.",
                                    fix="name them: --markers ADLB IL6 CRP (or markers = [...] in [adam])")])
    pcd = conv.need(t, "paramcd")
    codes = t.text(pcd)
    present = list(dict.fromkeys(codes[codes != ""]))
    absent = [c for c in wanted if c not in present]
    if absent:
        raise DatasetError([Problem(t.name, f"has no records of PARAMCD {absent}; its parameters: {present[:20]}.", pcd,
                                    fix="name PARAMCD values of the file (case-sensitive)")])
    names = {c: c.strip().lower() for c in wanted}
    if len(set(names.values())) < len(names):
        raise DatasetError([Problem(t.name, f"PARAMCD values {wanted} differ only in case; the markers would have one name.", pcd,
                                    fix="name each marker once")])
    t = t.subset(codes.isin(wanted))
    p = ProblemList()
    rec = conv.records(t, subj, "biomarker", p)
    code = t.text(pcd)[rec.index]
    unit_var = conv.need(t, "avalu")
    unit = t.text(unit_var)[rec.index]
    units = {}
    for c in wanted:
        seen = sorted(set(unit[code == c]) - {""})
        if len(seen) != 1:
            p.add(t.name, f"PARAMCD {c} has {'no unit' if not seen else f'several units {seen}'} in {unit_var}.", unit_var,
                  fix="give each marker's results in one unit (convert them), with the unit in AVALU")
        elif not UNIT_TEXT.match(seen[0]):
            p.add(t.name, f"the unit of PARAMCD {c}, {seen[0]!r}, is not a unit.", unit_var, fix="write the unit as the lab reports it")
        else:
            units[names[c]] = seen[0]
    aval_var = conv.need(t, "aval")
    aval = t.numbers(aval_var, p, aval_var)[rec.index]
    below = pd.Series(False, index=rec.index)
    limit = pd.Series(np.nan, index=rec.index)
    avalc = o.role("avalc")
    if t.has(avalc):
        text = t.text(avalc)[rec.index]
        flagged = text.str.startswith("<")
        below |= flagged
        limit = limit.where(~flagged, pd.to_numeric(text.str.lstrip("<=").str.strip().where(flagged, None), errors="coerce"))
    lloq_var = o.role("lloq")
    lloq = t.numbers(lloq_var, p, lloq_var)[rec.index] if t.has(lloq_var) else pd.Series(np.nan, index=rec.index)
    # with a flag variable, AVAL below LLOQ (an imputed value such as LLOQ/2); without one, AVAL at the limit too: a result
    # stored as the limit itself is the usual substitution for one below it
    below |= aval.notna() & lloq.notna() & ((aval < lloq) if t.has(avalc) else (aval <= lloq))
    limit = limit.where(limit.notna(), lloq)
    p.raise_if_any()
    value = aval.where(~below, limit)
    unknown = below & value.isna()
    if unknown.any():
        raise DatasetError([Problem(t.name, "results below the limit of quantification without the limit "
                                    f"({records_text(rec.index[unknown])}).",
                                    avalc, fix=f"give the limit in {lloq_var}, or write it in {avalc} as '<limit' (e.g. '<0.7')")])
    gone = ~below & aval.isna()
    if gone.any():
        conv.count(t.name, "missing_aval", gone, rec["arm"], rec["label"], f"biomarker record(s) without {aval_var} (no result) left out",
                   aval_var)
    keep = ~gone
    frame = pd.DataFrame({"usubjid": rec["usubjid"], "week": rec["week"], "marker": code.map(names), "value": value,
                          "below_lod": below.astype(int)})[keep.to_numpy()]
    conv._duplicates(t, frame, ["usubjid", "week", "marker"], "marker and visit")
    low = frame["value"] <= 0
    if low.any():
        raise DatasetError([Problem(t.name, f"biomarker values must be positive (they are analysed on the log scale), got "
                                    f"{sorted(set(frame.loc[low, 'value']))[:4]} ({records_text(frame.index[low])}).", aval_var,
                                    fix=f"mark results below the limit of quantification ({avalc} '<limit' or {lloq_var}) instead of 0")])
    weeks = tuple(sorted({int(w) for w in frame["week"]}))
    if 0 not in weeks:
        raise DatasetError([Problem(t.name, f"has no baseline biomarker records (weeks {list(weeks)}).", o.role("visit"),
                                    fix="the biomarker models need baseline (week 0) values: check the visits and the visit map")])
    limits = {}
    for c in wanted:
        seen = set(lloq[(code == c) & keep].dropna())
        if len(seen) == 1:
            limits[names[c]] = float(seen.pop())
    order = {u: i for i, u in enumerate(subj.index)}
    rank = {names[c]: i for i, c in enumerate(wanted)}
    frame = frame.assign(_o=frame["usubjid"].map(order), _m=frame["marker"].map(rank))
    frame = frame.sort_values(["_o", "week", "_m"], kind="stable")
    out = pd.DataFrame({"participant_id": frame["usubjid"].map(subj["participant_id"]), "week": frame["week"].astype(int),
                        "marker": frame["marker"], "value": frame["value"], "below_lod": frame["below_lod"]}).reset_index(drop=True)
    shown = ", ".join(f"{names[c]} ({units[names[c]]})" for c in wanted)
    conv.notes.append(f"{t.name}: markers {shown}; {len(out)} results "
                      f"at weeks {list(weeks)}, {int(out['below_lod'].sum())} below the limit of quantification")
    return Markers(out, weeks, {names[c]: units[names[c]] for c in wanted}, limits)


def intercurrent_events(conv, adsl, subj: pd.DataFrame, rec: pd.DataFrame, weeks: tuple[int, ...]) -> pd.DataFrame:
    """ice.csv's rows (participant_id, week, strategy, reason) from the ADSL of `conv`'s options and the analysed outcome
    records `rec` (their ADT places the visits relative to the last dose)."""
    o = conv.o
    variables = {role: conv.need(adsl, role) for role in ("eotstt", "dctreas", "trtsdt", "trtedt")}
    p = ProblemList()
    ids = adsl.text(o.role("usubjid"))
    status = pd.Series(adsl.text(variables["eotstt"]).to_numpy(), index=ids)
    reason = pd.Series(adsl.text(variables["dctreas"]).to_numpy(), index=ids)
    start = pd.Series(adsl.days(variables["trtsdt"], p).to_numpy(), index=ids)
    end = pd.Series(adsl.days(variables["trtedt"], p).to_numpy(), index=ids)
    p.raise_if_any()
    strategies = o.ice_strategy
    visits = {u: dict(zip(g["week"].astype(int), g["adt"])) for u, g in rec.groupby("usubjid", sort=False)}
    rows, unmapped, undated, none_after = [], [], [], []
    stopped = 0
    for u in subj.index:
        if status[u].upper() in ONGOING:
            continue
        stopped += 1
        why = reason[u]
        strategy = strategies.get(norm_label(why), strategies.get("*"))
        if strategy is None:
            unmapped.append(why or "(blank)")
            continue
        last_dose, first_dose = end[u], start[u]
        if not (np.isfinite(last_dose) and np.isfinite(first_dose)):
            undated.append(u)
            continue
        day = last_dose - first_dose + 1
        seen = visits.get(u, {})
        on = [w for w, a in seen.items() if np.isfinite(a) and a <= last_dose]
        latest = max(on) if on else None
        event = None
        for w in weeks[1:]:
            if latest is not None and w <= latest:
                continue
            attended = seen.get(w, np.nan)
            if (np.isfinite(attended) and attended > last_dose) or (not np.isfinite(attended) and 7 * w + 1 > day):
                event = w
                break
        if event is None:
            none_after.append(u)
            continue
        rows.append((subj.loc[u, "participant_id"], event, strategy, why))
    frame = pd.DataFrame(rows, columns=["participant_id", "week", "strategy", "reason"])
    by = frame["strategy"].value_counts()
    detail = (f"{stopped} analysed participant(s) discontinued treatment ({variables['eotstt']} not COMPLETED): {len(frame)} intercurrent "
              f"event(s) from {variables['dctreas']} (" + (", ".join(f"{s} {k}" for s, k in by.items()) or "none") + ")")
    if unmapped:
        counts = pd.Series(unmapped).value_counts()
        reasons = ", ".join(f"{r} {k}" for r, k in counts.items())
        detail += f"; {len(unmapped)} with a reason the strategy map does not name ({reasons}): no event"
    if undated:
        detail += f"; {len(undated)} without {variables['trtsdt']} or {variables['trtedt']}: no event ({undated[:5]})"
    if none_after:
        detail += f"; {len(none_after)} with no scheduled visit after the last dose: no event"
    conv.changes.append(Change(adsl.name, "intercurrent_events", detail + ".", variables["eotstt"], count=len(frame)))
    conv.notes.append(f"intercurrent events: {len(frame)} (" + (", ".join(f"{s} {k}" for s, k in by.items()) or "none") + ")")
    return frame


def off_treatment(conv, adsl, subj: pd.DataFrame, rec: pd.DataFrame, weeks: tuple[int, ...],
                  tend: int) -> tuple[pd.Series, pd.DataFrame] | None:
    """visits.csv's off_treatment column (docs/adam.md): (per analysed record of `rec`, 1 after the participant stopped the
    randomised treatment early, else 0; the visits missed after stopping, as (usubjid, week) rows), or None when the data
    cannot tell (neither ONTRTFL in the BDS nor TRTEDT with ADT) or show no visit attended after stopping early.

    A post-baseline record is after the treatment when ONTRTFL is not 'Y' (rec's `ontrtfl`), else when its ADT is after the
    ADSL's TRTEDT. A participant stopped early when such a record lies in the treatment phase (week <= tend); with EOTSTT,
    a participant whose status is COMPLETED (or ONGOING, blank) never did, and one who discontinued is also off at the
    visits they missed after the last dose (the first scheduled visit whose target day, 7 x week + 1 from TRTSDT, follows
    the last dose's day, as for the intercurrent events). Visits after the treatment end of a participant who did not stop
    early are on treatment (the planned follow-up). A record on treatment after one off treatment is refused."""
    o = conv.o
    t_name, flag_var = conv.bds_name, conv.ontrtfl_var
    p = ProblemList()
    ids = adsl.text(o.role("usubjid"))

    def adsl_days(role):
        var = o.role(role)
        return pd.Series(adsl.days(var, p).to_numpy(), index=ids) if adsl.has(var) else None

    last_dose, first_dose = adsl_days("trtedt"), adsl_days("trtsdt")
    p.raise_if_any()
    post = rec["week"] > 0
    if "ontrtfl" in rec:
        after = post & ~rec["ontrtfl"].str.upper().eq("Y")
        source = f"{flag_var} of {t_name}"
    elif last_dose is not None and rec["adt"].notna().any():
        end = rec["usubjid"].map(last_dose)
        undated = post & end.notna() & rec["adt"].isna()
        if undated.any():
            raise DatasetError([Problem(t_name, f"{int(undated.sum())} post-baseline record(s) without {o.role('adt')}: whether they "
                                        f"came after the last dose ({o.role('trtedt')} of {adsl.name}) is not known "
                                        f"({records_text(rec.index[undated])}).", o.role("adt"),
                                        fix=f"give every analysed record its {o.role('adt')}, or flag the on-treatment records with "
                                        "ONTRTFL = 'Y' (--adam-var ontrtfl=VARIABLE names another flag)")])
        after = post & end.notna() & (rec["adt"] > end)
        source = f"{o.role('adt')} of {t_name} after {o.role('trtedt')} of {adsl.name}"
    else:
        return None
    status_var = o.role("eotstt")
    status = pd.Series(adsl.text(status_var).str.upper().to_numpy(), index=ids) if adsl.has(status_var) else None
    completed = rec["usubjid"].map(status).isin(ONGOING) if status is not None else pd.Series(False, index=rec.index)
    after &= ~completed
    early = set(rec.loc[after & (rec["week"] <= tend), "usubjid"])
    if status is not None:
        early |= {u for u in subj.index if status.get(u, "") not in ONGOING}
    off = after & rec["usubjid"].isin(early)
    if not (off & (rec["week"] > 0)).any():
        return None
    first = rec[off].groupby("usubjid")["week"].min()
    back = ~off & (rec["week"] > rec["usubjid"].map(first))
    if back.any():
        who = sorted(set(rec.loc[back, "usubjid"]))
        raise DatasetError([Problem(t_name, f"record(s) on treatment after one off treatment ({source}) for subject(s) {who[:6]}"
                                    f"{' ...' if len(who) > 6 else ''} ({records_text(rec.index[back])}); the treatment-policy "
                                    "analysis takes the first stop of the randomised treatment as permanent.", flag_var or o.role("adt"),
                                    fix="correct the flag or the dates; a resumed treatment still counts as stopped from the first "
                                    "stop (flag the later records as off treatment), or name another flag with --adam-var ontrtfl=VAR")])
    stop = first.to_dict()
    if status is not None and last_dose is not None and first_dose is not None:  # discontinued: the visits missed after the last dose
        seen = {u: set(g["week"]) for u, g in rec.groupby("usubjid", sort=False)}
        on_weeks = rec[~off].groupby("usubjid")["week"].max().to_dict()
        for u in subj.index:
            if status.get(u, "") in ONGOING or not (np.isfinite(last_dose.get(u, np.nan)) and np.isfinite(first_dose.get(u, np.nan))):
                continue
            day = last_dose[u] - first_dose[u] + 1
            for w in weeks[1:]:
                if w > tend or w >= stop.get(u, np.inf):
                    break
                if w > on_weeks.get(u, 0) and w not in seen.get(u, ()) and 7 * w + 1 > day:
                    stop[u] = w
                    break
    missed = [(u, w) for u, s in stop.items() for w in weeks[1:] if w >= s and w not in set(rec.loc[rec["usubjid"] == u, "week"])]
    flags = off.astype(int)
    conv.changes.append(Change(t_name, "off_treatment", f"off_treatment from {source}: {len(stop)} participant(s) stopped the "
                               f"randomised treatment early; {int(flags.sum())} visit(s) attended after stopping (retrieved), "
                               f"{len(missed)} missed after stopping (empty score, off_treatment 1).", flag_var or o.role("adt"),
                               count=int(flags.sum())))
    return flags, pd.DataFrame(missed, columns=["usubjid", "week"])
