"""The conversion of ADaM datasets to the project's folder format (data/adam.py is the public face: read_adam, load_adam,
write_folder, python -m data.adam). One _Conversion reads the ADSL (participants, arms, sites, covariates) and the BDS
dataset of the outcome (analysed records, weeks, baseline, scale, schedule); data/adam_parts.py adds the biomarkers and
the intercurrent events. Every refusal is a DatasetError naming the file, variable, subjects or records, why and the fix;
every exclusion is counted (per arm and visit) and reported as a Change (docs/adam.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .adam_files import AdamTable, read_table, records_text
from .adam_options import AdamOptions, norm_label, parse_covariate
from .adam_parts import biomarkers as _biomarkers
from .adam_parts import intercurrent_events as _ice_rows
from .adam_parts import off_treatment as _off_treatment
from .errors import Change, DatasetError, Problem, ProblemList
from .ice import ICE_FILE
from .meta import META_FILE, DatasetMeta, parse_meta
from .schema import BIOMARKERS_FILE, PARTICIPANTS_FILE, VISITS_FILE, _closest

# (how PARAMCD or PARAM reads once upper-cased without punctuation, name, label, min, max)
_TOTAL = r"(TOT|TOTAL|TOTALSCORE|TOTSCORE|SCORE)?"
KNOWN_SCALES = (
    (re.compile(r"^MADRS|MONTGOMERYASBERG"), "madrs", "MADRS", 0, 60),
    (re.compile(rf"^(HAMD|HDRS|HRSD|HAMD17|HDRS17|HRSD17){_TOTAL}$|^(HAMD|HDRS|HRSD)17|HAMILTONDEPRESSION.*17"), "hamd", "HAM-D 17", 0, 52),
    (re.compile(rf"^BDI(II|2)?{_TOTAL}$|BECKDEPRESSIONINVENTORY"), "bdi", "BDI-II", 0, 63),
    (re.compile(rf"^PHQ9{_TOTAL}$|PATIENTHEALTHQUESTIONNAIRE9"), "phq9", "PHQ-9", 0, 27),
    (re.compile(rf"^QIDS(SR16|SR|16)?{_TOTAL}$|QUICKINVENTORYOFDEPRESSIVESYMPTOMATOLOGY"), "qids", "QIDS-SR16", 0, 27),
    (re.compile(r"^CGIS(EV|EVERITY|SCORE)?$|^CGISEVERITY|CLINICALGLOBALIMPRESSIONS?SEVERITY"), "cgis", "CGI-S", 1, 7),
)
# ADSL arm values that are not arms (CDISC controlled terminology), compared case-insensitively
NON_ARMS = {"", "screen failure", "screen failed", "not assigned", "not treated", "unplanned treatment", "not randomized",
            "not randomised"}
RESERVED = ("participant_id", "arm", "site", "withdrew_consent")
ROLE_WHAT = {
    "usubjid": "the subject key", "participant_id": "the participant ids", "arm": "the planned treatment", "site": "the site",
    "paramcd": "the parameter code", "visit": "the analysis visit", "visitn": "the analysis visit number", "aval": "the analysis value",
    "avalu": "the unit", "eotstt": "the end-of-treatment status", "dctreas": "the reason for discontinuing treatment",
    "trtsdt": "the date of the first dose", "trtedt": "the date of the last dose",
    "ontrtfl": "the on-treatment record flag",
}
ADAM_NOTE = "adam.json"  # in a written folder: the ADaM files read and what was excluded
_WEEK = re.compile(r"\b(?:week|wk|w)\s*(\d+)\b")
_DAY = re.compile(r"\bday\s*(-?\d+)\b")


def recognise_scale(*texts: str) -> tuple[str, str, float, float] | None:
    """(name, label, min, max) of the first text (PARAMCD, then PARAM) naming a known scale, else None."""
    for text in texts:
        key = re.sub(r"[^A-Z0-9]", "", str(text or "").upper())
        for pattern, name, label, lo, hi in KNOWN_SCALES:
            if key and pattern.search(key):
                return name, label, lo, hi
    return None


def parse_visit(label: str) -> float:
    """The week of an AVISIT label: 'Baseline' 0, 'Week 6' 6, 'Week 16 (Follow-up)' 16, 'Day 1' 0, 'Day 15' 2; else NaN."""
    text = norm_label(label)
    if text.startswith("baseline"):
        return 0.0
    m = _WEEK.search(text)
    if m:
        return float(m.group(1))
    m = _DAY.search(text)
    if m and int(m.group(1)) >= 1 and (int(m.group(1)) - 1) % 7 == 0:
        return (int(m.group(1)) - 1) / 7
    return np.nan


def _outcome_name(param: str) -> str:
    name = re.sub(r"\W", "_", param.strip().lower()) or "score"
    return name if name[0].isalpha() else f"y_{name}"


@dataclass
class AdamTrial:
    """ADaM datasets converted to the folder format: the frames of participants.csv, visits.csv, biomarkers.csv and
    ice.csv (None when absent), the metadata and its dataset.toml text, what was excluded (one dict per file, rule, value,
    arm and visit, with the count) and the changes reported with the loaded dataset."""

    participants: pd.DataFrame
    visits: pd.DataFrame
    biomarkers: pd.DataFrame | None
    ice: pd.DataFrame | None
    meta: DatasetMeta
    toml: str
    excluded: list[dict]
    changes: list[Change]
    source: str
    options: AdamOptions
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """What was read, in a few lines (python -m data.adam prints it)."""
        lines = list(self.notes) + [f"  - {c}" for c in self.changes]
        return "\n".join(lines)


class _Conversion:
    """One conversion: the options, and the changes and exclusions found on the way."""

    def __init__(self, options: AdamOptions, limit: int | None, events: bool = True):
        self.o, self.limit, self.events = options, limit, events
        self.changes: list[Change] = []
        self.excluded: list[dict] = []
        self.notes: list[str] = []
        self.follow: list[int] = []

    # ------------------------------------------------------------ helpers

    def need(self, table: AdamTable, role: str, what: str | None = None) -> str:
        var = self.o.role(role)
        if not table.has(var):
            guess = _closest(var, table.variables)
            raise DatasetError([Problem(table.name, f"has no variable {var} ({what or ROLE_WHAT.get(role, role)}); its variables: "
                                        f"{table.variables[:40]}." + (f" Probably {guess}." if guess else ""), var,
                                        fix=f"name the variable with --adam-var {role}=VARIABLE (or {role} = \"VARIABLE\" under "
                                        "[adam.variables] of a dataset.toml beside the ADSL file)")])
        return var

    def count(self, file: str, reason: str, mask: pd.Series, arm: pd.Series, label: pd.Series, detail: str, column: str | None,
              value: str = "") -> None:
        """Record excluded records (mask) per arm and visit, and one change for them."""
        n = int(mask.sum())
        if not n:
            return
        groups = pd.DataFrame({"arm": arm[mask], "visit": label[mask]}).groupby(["arm", "visit"], sort=False).size()
        arms = self.arm_order
        def rank(kv):
            (a, v), _ = kv
            w = parse_visit(v)
            return (arms.index(a) if a in arms else len(arms), a, w if np.isfinite(w) else np.inf, v)

        ordered = sorted(groups.items(), key=rank)
        for (a, v), k in ordered:
            self.excluded.append({"file": file, "rule": reason, "value": value, "arm": a, "visit": v, "count": int(k)})
        by_arm: dict[str, list[str]] = {}
        for (a, v), k in ordered:
            by_arm.setdefault(a or "(no arm)", []).append(f"{v or '(no visit)'} {k}")
        where = "; ".join(f"{a}: {', '.join(parts)}" for a, parts in by_arm.items())
        self.changes.append(Change(file, reason, f"{n} {detail} ({where}).", column, count=n))

    # ------------------------------------------------------------ participants (ADSL)

    def subjects(self, adsl: AdamTable, bds: AdamTable) -> pd.DataFrame:
        o, name = self.o, adsl.name
        uid = self.need(adsl, "usubjid")
        ids = adsl.text(uid)
        p = ProblemList()
        blank = ids == ""
        if blank.any():
            p.add(name, f"{uid} is empty ({records_text(ids.index[blank])}).", uid, fix="every ADSL record needs its subject's id")
        dup = ids.duplicated(keep=False) & ~blank
        if dup.any():
            p.add(name, f"has several records for subject(s) {sorted(set(ids[dup]))[:5]} ({records_text(ids.index[dup])}); the ADSL "
                  "holds one record per subject.", uid, fix="keep one record per subject (is this a BDS dataset rather than the ADSL?)")
        p.raise_if_any()
        self.adsl_ids = set(ids)
        flag = o.flag
        if not adsl.has(flag):
            flags = [c for c in adsl.variables if c.endswith("FL")]
            raise DatasetError([Problem(name, f"has no population flag {flag}; its flags: {flags}.", flag,
                                        fix="name the analysed population's flag with --population-flag (e.g. FASFL), or "
                                        "population_flag in [adam] of a dataset.toml beside the ADSL file")])
        inpop = adsl.text(flag).str.upper().isin(["Y", "1"])
        arm, armvar, arm_file = self._arm(adsl, bds, ids)
        self.arm_of = dict(zip(ids, arm))
        nonarm = arm.str.casefold().isin(NON_ARMS)
        bad = inpop & nonarm
        if bad.any():
            p.add(name, f"{int(bad.sum())} subject(s) with {flag} = 'Y' have no randomised arm ({armvar} {sorted(set(arm[bad]))}): "
                  f"{list(ids[bad])[:6]} ({records_text(ids.index[bad])}).", armvar,
                  fix=f"check {flag} and {armvar} of these subjects, or choose the population with --population-flag")
        values = list(dict.fromkeys(arm[~nonarm]))
        if o.arms is not None:
            unknown = [a for a in o.arms if a not in values]
            if unknown:
                raise DatasetError([Problem(arm_file, f"the arms to analyse {unknown} are not values of {armvar}; its arms: {values}.",
                                            armvar, fix="list arms as they are written in the data (case-sensitive) in [adam] arms")])
            analysed = list(dict.fromkeys(o.arms))
            other = inpop & ~nonarm & ~arm.isin(analysed)
            if other.any():
                left = arm[other].value_counts()
                self.changes.append(Change(name, "arm_not_analysed", f"{int(other.sum())} participant(s) of arm(s) not listed in "
                                           f"[adam] arms not analysed ({', '.join(f'{a} {k}' for a, k in left.items())}).", armvar,
                                           count=int(other.sum())))
        else:
            analysed = values
        counts = arm[inpop].value_counts()
        for a in analysed:
            k = int(counts.get(a, 0))
            if k < 2:
                total = int((arm == a).sum())
                p.add(arm_file, f"{armvar} '{a}' has {k} participant(s) with {flag} = 'Y' ({total} in the ADSL); every arm needs at "
                      "least 2 analysed participants.", armvar,
                      fix=f"check the population flag ({flag}; --population-flag chooses another), or list the arms to analyse "
                      "in [adam] arms of a dataset.toml beside the ADSL file")
        if len(analysed) < 2:
            p.add(arm_file, f"has one arm ({analysed}); a comparison needs a control arm and at least one active arm.", armvar,
                  fix="check the arm variable (--adam-var arm=VARIABLE)")
        p.raise_if_any()
        self.control, self.active = self._reference(analysed, adsl, arm, armvar, arm_file)
        self.arm_order = [self.control, *self.active]
        keep = inpop & arm.isin(analysed)
        out = ~inpop
        if out.any():
            left = arm[out].replace("", "(no arm)").value_counts()
            self.changes.append(Change(name, "population", f"{int(out.sum())} subject(s) without {flag} = 'Y' not analysed "
                                       f"({', '.join(f'{a} {k}' for a, k in left.items())}).", flag, count=int(out.sum())))
            for a, k in left.items():
                self.excluded.append({"file": name, "rule": "population", "value": flag, "arm": a, "visit": "", "count": int(k)})
        site = self._site(adsl, keep, ids, p)
        pidvar = self.need(adsl, "participant_id")
        pid = adsl.text(pidvar)
        empty = keep & (pid == "")
        twice = keep & pid.duplicated(keep=False) & (pid != "")
        if empty.any() or twice.any():
            p.add(name, f"{pidvar} must give every analysed participant a distinct id (empty or repeated: "
                  f"{sorted(set(ids[empty | twice]))[:6]}).", pidvar, fix="choose another variable with --adam-var participant_id=VARIABLE")
        frame = pd.DataFrame({"participant_id": pid, "arm": arm, "site": site}, index=ids.index)
        self.kinds = {}
        for col, values in self._covariates(adsl, keep, ids, p).items():
            frame[col] = values
        p.raise_if_any()
        frame = frame[keep.to_numpy()]
        frame.index = pd.Index(ids[keep], name="usubjid")
        n = ", ".join(f"{a} {int((frame['arm'] == a).sum())}" for a in self.arm_order)
        self.notes.append(f"{name}: {len(ids)} subjects, {len(frame)} analysed ({flag} = 'Y'): {n}; control arm {self.control}")
        return frame

    def _arm(self, adsl, bds, ids):
        o = self.o
        armvar = o.role("arm")
        if adsl.has(armvar):
            arm = adsl.text(armvar)
            file = adsl.name
        elif not o.overridden("arm") and bds.has("TRTP") and bds.has(o.role("usubjid")):
            per = pd.DataFrame({"u": bds.text(o.role("usubjid")), "a": bds.text("TRTP")})
            per = per[per["a"] != ""].groupby("u")["a"].unique()
            conflict = per[per.map(len) > 1]
            if len(conflict):
                raise DatasetError([Problem(bds.name, f"TRTP differs between the records of subject(s) {list(conflict.index[:5])}; "
                                            f"the ADSL has no {armvar} to give each participant one arm.", "TRTP",
                                            fix=f"add {armvar} to the ADSL, or name its arm variable with --adam-var arm=VARIABLE")])
            arm = ids.map(per.map(lambda a: a[0])).fillna("").astype(object)
            armvar, file = "TRTP", bds.name
            self.changes.append(Change(adsl.name, "arm_from_bds", f"the ADSL has no {o.role('arm')}: each participant's arm is "
                                       f"TRTP of {bds.name}.", "TRTP"))
        else:
            self.need(adsl, "arm", "the planned treatment: TRT01P, or TRTP in the BDS")
        return arm.map(lambda a: " ".join(str(a).split())), armvar, file

    def _reference(self, analysed, adsl, arm, armvar, file):
        o = self.o
        if o.reference is not None:
            if o.reference not in analysed:
                near = [a for a in analysed if a.casefold() == o.reference.casefold()]
                raise DatasetError([Problem(file, f"the reference arm {o.reference!r} is not an analysed value of {armvar}: {analysed}."
                                            + (f" Probably {near[0]!r}." if near else ""), armvar,
                                            fix="give the reference arm (--reference, or reference in [adam]) as written in the data "
                                            "(case-sensitive)")])
            control = o.reference
        else:
            placebo = [a for a in analysed if "placebo" in a.casefold()]
            if len(placebo) != 1:
                why = "no arm's name contains 'placebo'" if not placebo else f"several arms' names contain 'placebo' ({placebo})"
                raise DatasetError([Problem(file, f"the control arm is not known: {why}; the arms of {armvar}: {analysed}.", armvar,
                                            fix="name the control arm with --reference ARM (or reference in [adam])")])
            control = placebo[0]
        active = [a for a in analysed if a != control]
        if o.arms is None:
            active.sort()
            armn = o.role("armn")
            if adsl.has(armn):  # the sponsor's arm codes order the arms (placebo 0, low 1, high 2)
                codes = pd.DataFrame({"a": arm, "n": adsl.text(armn)})
                codes = codes[codes["a"].isin(active) & (codes["n"] != "")].drop_duplicates()
                per = codes.groupby("a")["n"].nunique()
                nums = pd.to_numeric(codes.drop_duplicates("a").set_index("a")["n"], errors="coerce")
                if len(per) == len(active) and (per == 1).all() and nums.notna().all() and nums.is_unique:
                    active.sort(key=lambda a: nums[a])
        if o.doses is not None:
            everyone = [control, *active]
            wrong = sorted(set(o.doses) ^ set(everyone))
            if wrong:
                raise DatasetError([Problem(META_FILE, f"[adam] doses must give a dose for every analysed arm {everyone} and no other "
                                            f"(not matching: {wrong}).", "[adam] doses", fix="one arm = dose line per arm")])
        return control, active

    def _site(self, adsl, keep, ids, p):
        o = self.o
        sitevar = o.role("site")
        if not adsl.has(sitevar) and not o.overridden("site") and adsl.has("SITEGR1"):
            sitevar = "SITEGR1"
        sitevar = sitevar if adsl.has(sitevar) else self.need(adsl, "site", "the site: SITEID or SITEGR1")
        site = adsl.text(sitevar)
        empty = keep & (site == "")
        if empty.any():
            p.add(adsl.name, f"{sitevar} is empty for analysed subject(s) {list(ids[empty])[:6]} ({records_text(ids.index[empty])}).",
                  sitevar, fix="give every analysed subject a site, or choose another site variable with --adam-var site=VARIABLE")
        return site

    def _covariates(self, adsl, keep, ids, p) -> dict[str, pd.Series]:
        out, o = {}, self.o
        declared = {parse_covariate(spec)[0] for spec in (o.covariates or ())}  # a covariate kept too is a covariate
        specs = [(spec, True) for spec in (o.covariates or ())] + [(spec, False) for spec in (o.keep or ()) if spec.upper() not in declared]
        for spec, declared in specs:
            var, kind = parse_covariate(spec)
            if not adsl.has(var):
                guess = _closest(var, adsl.variables)
                p.add(adsl.name, f"has no variable {var} (a {'covariate' if declared else 'variable to keep'})."
                      + (f" Probably {guess}." if guess else ""), var, fix="give ADSL variable names (--covariates, --keep)")
                continue
            col = var.lower()
            if col in RESERVED or col in out:
                p.add(adsl.name, f"{var} would be the participants.csv column '{col}', which is "
                      + ("taken by the folder format." if col in RESERVED else "given twice."), var,
                      fix="leave it out: the arm and site are always read, and each variable is named once")
                continue
            values = adsl.text(var)
            if declared:
                numbers = pd.to_numeric(values[values != ""], errors="coerce")
                numeric = var in adsl.numeric or (var not in adsl.dates and numbers.notna().all())
                self.kinds[col] = kind or ("continuous" if numeric else "categorical")
                missing = keep & (values == "")
                if missing.any():
                    p.add(adsl.name, f"covariate {var} is missing for {int(missing.sum())} analysed participant(s): "
                          f"{list(ids[missing])[:6]} ({records_text(ids.index[missing])}); the models do not impute covariates.", var,
                          fix=f"fill in {var}, or leave it out of --covariates")
            out[col] = values
        return out

    # ------------------------------------------------------------ records of a BDS dataset

    def records(self, t: AdamTable, subj: pd.DataFrame, what: str, p: ProblemList) -> pd.DataFrame:
        """The analysed records of `t` (already one parameter or the markers): of analysed participants, not derived (DTYPE), with
        ANL01FL = 'Y' when the variable exists (or ABLFL = 'Y'), each with its week. Exclusions are counted."""
        o, name = self.o, t.name
        uid = self.need(t, "usubjid")
        u = t.text(uid)
        unknown = ~u.isin(self.adsl_ids)
        if unknown.any():
            raise DatasetError([Problem(name, f"has records of subject(s) not in the ADSL: {sorted(set(u[unknown]))[:6]} "
                                        f"({records_text(u.index[unknown])}).", uid,
                                        fix="give the ADSL and the BDS of the same study (USUBJID values are case-sensitive)")])
        arm = u.map(self.arm_of).fillna("")
        visit = o.role("visit")
        label = t.text(visit) if t.has(visit) else (t.text(o.role("visitn")) if t.has(o.role("visitn")) else pd.Series("", index=u.index))
        keep = u.isin(subj.index)
        if (~keep).any():
            n = int((~keep).sum())
            self.changes.append(Change(name, "not_analysed", f"{n} {what} record(s) of subjects not analysed (without {o.flag} = 'Y' "
                                       "or of an arm not analysed) left out.", uid, count=n))
        dtype_var = o.role("dtype")
        if t.has(dtype_var):
            dtype = t.text(dtype_var)
            for d in sorted(set(dtype[keep & (dtype != "")])):
                derived = keep & (dtype == d)
                self.count(name, "derived", derived, arm, label, f"{what} record(s) derived by imputation (DTYPE = {d}) excluded: "
                           "analysis artefacts, not observations", dtype_var, d)
            keep &= dtype == ""
        ablfl_var = o.role("ablfl")
        ablfl = t.text(ablfl_var).str.upper().eq("Y") if t.has(ablfl_var) else pd.Series(False, index=u.index)
        anl = o.role("anlfl")
        if t.has(anl):
            off = keep & ~t.text(anl).str.upper().eq("Y") & ~ablfl
            self.count(name, "not_anl01fl", off, arm, label, f"{what} record(s) without {anl} = 'Y' (not analysis records) excluded", anl)
            keep &= ~off
        week = self.weeks(t, keep, label, ablfl)
        frame = pd.DataFrame({"usubjid": u, "arm": arm, "label": label, "week": week, "ablfl": ablfl}, index=u.index)
        self.has_ablfl = t.has(ablfl_var)
        return frame[keep.to_numpy()]

    def weeks(self, t: AdamTable, rows: pd.Series, label: pd.Series, ablfl: pd.Series) -> pd.Series:
        """Each record's week: the visit map, AVISITN, or AVISIT parsed; ABLFL = 'Y' is week 0. Records of `rows` mapping to
        no week are refused."""
        o = self.o
        rule = o.visit_map or "auto"
        visit, visitn = o.role("visit"), o.role("visitn")
        p = ProblemList()
        if isinstance(rule, dict):  # the declared map, then the labels that name their week
            week = label.map(lambda s: rule.get(norm_label(s), parse_visit(s))).astype(float)
        elif rule == "avisitn" or not t.has(visit):
            visitn = self.need(t, "visitn")
            week = t.numbers(visitn, p, visitn)
            p.raise_if_any()
            week = week.where((week >= 0) & (week % 1 == 0))
        else:
            week = label.map(parse_visit).astype(float)
            named = rows & ~ablfl
            if named.any() and week[named].isna().all() and t.has(visitn):  # no AVISIT names a week: AVISITN is the week
                number = t.numbers(visitn, p, visitn)
                if not p.items:
                    week = number.where((number >= 0) & (number % 1 == 0))
                    self.changes.append(Change(t.name, "weeks_from_avisitn", f"no {visit} value names a week ('Week 6'): {visitn} is "
                                               "taken as the week (declare --visit-map if it is not).", visitn))
        week = week.where(~ablfl, 0.0)
        lost = rows & week.isna()
        if lost.any():
            shown = label[lost].replace("", "(blank)").value_counts()
            items = ", ".join(f"{v!r} ({k} record{'s' if k > 1 else ''})" for v, k in list(shown.items())[:8])
            example = ",".join(f"{v}=W" for v in list(shown.index)[:2])
            anl = o.role("anlfl")
            raise DatasetError([Problem(t.name, f"{visit if t.has(visit) else visitn} value(s) {items} map to no week "
                                        f"({records_text(label.index[lost])}).", visit if t.has(visit) else visitn,
                                        fix=f"declare their weeks with --visit-map \"{example}\" (W a whole week; visit_map in [adam]), "
                                        f"or set {anl} = 'Y' only on the records of scheduled visits (records without {anl} = 'Y' "
                                        "are not analysed)")])
        return week

    # ------------------------------------------------------------ the outcome

    def outcome(self, bds: AdamTable, subj: pd.DataFrame) -> pd.DataFrame:
        o = self.o
        pcd = self.need(bds, "paramcd")
        codes = bds.text(pcd)
        present = list(dict.fromkeys(codes[codes != ""]))
        labels = bds.text(o.role("param")) if bds.has(o.role("param")) else pd.Series("", index=codes.index)
        shown = ", ".join(f"{c} ({labels[codes == c].iloc[0]})" if labels[codes == c].iloc[0] else c for c in present[:12])
        param = o.param
        if param is None:
            if len(present) != 1:
                raise DatasetError([Problem(bds.name, f"has {len(present)} parameters ({shown}); which is the outcome is not known.", pcd,
                                            fix="name the outcome's PARAMCD with --param (or param in [adam])")])
            param = present[0]
        if param not in present:
            near = [c for c in present if c.casefold() == param.casefold()]
            raise DatasetError([Problem(bds.name, f"has no records of PARAMCD {param!r}; its parameters: {shown or 'none'}."
                                        + (f" Probably {near[0]!r} (PARAMCD values are case-sensitive)." if near else ""), pcd,
                                        fix="give one of its PARAMCD values with --param, or the BDS dataset of that parameter")])
        self.param, self.param_label = param, labels[codes == param].iloc[0]
        t = bds.subset(codes == param)
        p = ProblemList()
        rec = self.records(t, subj, "outcome", p)
        aval_var = self.need(t, "aval")
        aval = t.numbers(aval_var, p, aval_var)
        p.raise_if_any()
        rec["aval"] = aval[rec.index]
        gone = rec["aval"].isna()
        if gone.any():
            self.count(t.name, "missing_aval", gone, rec["arm"], rec["label"], f"record(s) without {aval_var} treated as missed visits",
                       aval_var)
            rec = rec[~gone]
        adt = self.o.role("adt")
        rec["adt"] = t.days(adt, p)[rec.index] if t.has(adt) else np.nan
        self.bds_name, self.ontrtfl_var = t.name, (self.o.role("ontrtfl") if t.has(self.o.role("ontrtfl")) else "")
        if self.ontrtfl_var:
            rec["ontrtfl"] = t.text(self.ontrtfl_var)[rec.index]
        p.raise_if_any()
        self._duplicates(t, rec, ["usubjid", "week"], "visit")
        base = rec.loc[rec["week"] == 0].set_index("usubjid")["aval"]
        missing = [u for u in subj.index if u not in base.index]
        if missing:
            where = f"{o.role('ablfl')} = 'Y'" if self.has_ablfl else "a week-0 visit"
            raise DatasetError([Problem(t.name, f"{len(missing)} analysed participant(s) have no baseline record ({where}, not derived, "
                                        f"with {aval_var}) of PARAMCD {param}: {missing[:8]}{' ...' if len(missing) > 8 else ''}.",
                                        o.role("ablfl") if self.has_ablfl else o.role("visit"),
                                        fix=f"every analysed participant needs a baseline value: leave them out of the population "
                                        f"({o.flag}; --population-flag chooses another flag), or correct their baseline records")])
        self._base_check(t, rec, base)
        return rec

    def _duplicates(self, t: AdamTable, rec: pd.DataFrame, keys: list[str], what: str) -> None:
        dup = rec.duplicated(keys, keep=False)
        if dup.any():
            groups = rec[dup].groupby(keys, sort=False)
            items = [f"{k[0]} week {int(k[1])}{' ' + k[2] if len(k) > 2 else ''} ({records_text(g.index)})" for k, g in list(groups)[:6]]
            raise DatasetError([Problem(t.name, f"has several analysed records for one participant and {what}: {'; '.join(items)}"
                                        f"{' ...' if groups.ngroups > 6 else ''}.", self.o.role("usubjid"),
                                        fix=f"keep one analysis record per participant and {what}: flag the one analysed with "
                                        f"{self.o.role('anlfl')} = 'Y', or map unscheduled visits to no week")])

    def _base_check(self, t: AdamTable, rec: pd.DataFrame, base: pd.Series) -> None:
        p = ProblemList()
        for role, expected, what in (("base", rec["usubjid"].map(base), "the baseline record's AVAL"),
                                     ("chg", rec["aval"] - rec["usubjid"].map(base), "AVAL minus the baseline AVAL")):
            var = self.o.role(role)
            if not t.has(var):
                continue
            given = t.numbers(var, p, var)[rec.index]
            off = given.notna() & (np.abs(given - expected) > 1e-9) & (rec["week"] != 0)
            if off.any():
                who = sorted(set(rec.loc[off, "usubjid"]))
                self.changes.append(Change(t.name, f"{role}_differs", f"{var} differs from {what} in {int(off.sum())} record(s) of "
                                           f"{len(who)} participant(s) ({who[:5]}{' ...' if len(who) > 5 else ''}; "
                                           f"{records_text(rec.index[off])}): the analysis uses AVAL and the baseline record, "
                                           f"not {var}.", var, count=int(off.sum())))

    def scale(self, t_name: str, rec: pd.DataFrame) -> tuple[str, str, float, float, bool]:
        o = self.o
        found = recognise_scale(self.param, self.param_label)
        if o.scale is not None:
            name, label = found[:2] if found else (_outcome_name(self.param), self.param)
            lo, hi = o.scale
        elif found:
            name, label, lo, hi = found
        else:
            raise DatasetError([Problem(t_name, f"PARAMCD {self.param!r}" + (f" ({self.param_label})" if self.param_label else "")
                                        + " is not a scale the reader knows (MADRS, HAM-D 17, BDI-II, PHQ-9, QIDS-SR16, CGI-S), so "
                                        "its valid range is not known.", o.role("paramcd"),
                                        fix="give the range with --scale MIN:MAX (or scale = [min, max] in [adam])")])
        out = (rec["aval"] < lo) | (rec["aval"] > hi)
        if out.any():
            seen = sorted(set(rec.loc[out, "aval"]))[:4]
            raise DatasetError([Problem(t_name, f"AVAL outside the {label} range {lo:g}-{hi:g} (e.g. {seen}; "
                                        f"{records_text(rec.index[out])}).", o.role("aval"),
                                        fix="correct the values, or give the scale's range with --scale MIN:MAX")])
        integer = bool((rec["aval"] % 1 == 0).all())
        return name, label, lo, hi, integer

    def schedule(self, t_name: str, rec: pd.DataFrame) -> tuple[tuple[int, ...], int]:
        weeks = tuple(sorted({int(w) for w in rec["week"]}))
        if len(weeks) < 2:
            raise DatasetError([Problem(t_name, f"has analysed records at week {list(weeks)} only; a trial needs visits after baseline.",
                                        self.o.role("visit"), fix="check the visits (AVISIT) and the visit map")])
        if self.o.treatment_end is not None:
            if self.o.treatment_end not in weeks[1:]:
                raise DatasetError([Problem(t_name, f"the treatment end, week {self.o.treatment_end}, is not a visit week "
                                            f"{list(weeks[1:])}.", self.o.role("visit"), fix="give one of the visit weeks")])
            return weeks, self.o.treatment_end
        follow = {int(w) for w, label in zip(rec["week"], rec["label"]) if "follow" in norm_label(label) and w > 0}
        before = [w for w in weeks[1:] if not follow or w < min(follow)]
        tend = before[-1] if before else weeks[-1]
        self.follow = sorted(follow) if follow and before else []
        return weeks, tend

    # ------------------------------------------------------------ run

    def run(self) -> AdamTrial:
        o = self.o
        adsl = read_table(o.adsl, "ADSL", self.limit)
        bds = read_table(o.bds, "BDS", self.limit)
        subj = self.subjects(adsl, bds)
        rec = self.outcome(bds, subj)
        name, label, lo, hi, integer = self.scale(bds.name, rec)
        weeks, tend = self.schedule(bds.name, rec)
        pid = subj["participant_id"]
        visits = pd.DataFrame({"participant_id": rec["usubjid"].map(pid), "week": rec["week"].astype(int), name: rec["aval"]})
        off = _off_treatment(self, adsl, subj, rec, weeks, tend)
        if off is not None:  # the visits after stopping treatment early, and those missed after stopping (empty score)
            flags, missed = off
            visits["off_treatment"] = flags
            visits = pd.concat([visits, pd.DataFrame({"participant_id": missed["usubjid"].map(pid), "week": missed["week"].astype(int),
                                                      name: np.nan, "off_treatment": 1})], ignore_index=True)
        order = {p: i for i, p in enumerate(pid)}
        visits = visits.assign(_o=visits["participant_id"].map(order)).sort_values(["_o", "week"], kind="stable").drop(columns="_o")
        self.notes.append(f"{bds.name}: PARAMCD {self.param}" + (f" ({self.param_label})" if self.param_label else "")
                          + f" -> {name}, {label} {lo:g}-{hi:g}{', integer' if integer else ''}; "
                          f"{int(visits[name].notna().sum())} analysed visits at weeks {list(weeks)}, treatment end week {tend}"
                          + (f" (AVISIT says follow-up at week {self.follow})" if self.follow else ""))
        bio = _biomarkers(self, subj) if o.markers is not None else None
        ice = _ice_rows(self, adsl, subj, rec, weeks) if o.ice_strategy and self.events else None
        studyid = o.role("studyid")
        study = adsl.text(studyid).iloc[0] if adsl.has(studyid) and len(adsl.frame) else ""
        title = o.title or " ".join(x for x in (study, self.param_label or self.param) if x)
        meta = DatasetMeta(
            outcome=name, outcome_label=label, score_min=lo, score_max=hi, integer_scores=integer, control_arm=self.control,
            treatment_arms=tuple(self.active), doses={a: float((o.doses or {})[a]) for a in self.arm_order} if o.doses else {},
            weeks=weeks, treatment_end=tend, biomarker_weeks=bio.weeks if bio else (0, tend),
            marker_units=bio.units if bio else {}, detection_limits=bio.limits if bio else {}, title=title,
            covariates=dict(self.kinds))
        toml = meta.to_toml()
        try:
            parse_meta(toml)
        except DatasetError as exc:
            raise _converted(exc, o) from None
        participants = subj.reset_index(drop=True)
        source = f"ADaM {o.adsl.resolve()} + {o.bds.resolve()} (PARAMCD {self.param}"
        if bio:
            source += f"; {o.markers.resolve()} ({' '.join(o.marker_params or ())})"
        derived = {}
        for e in self.excluded:
            if e["rule"] == "derived":
                derived[e["value"]] = derived.get(e["value"], 0) + e["count"]
        if derived:
            source += "; derived records excluded: " + ", ".join(f"{k} {v}" for k, v in derived.items())
        return AdamTrial(participants, visits.reset_index(drop=True), bio.frame if bio else None, ice, meta, toml, self.excluded,
                         self.changes, source + ")", o, self.notes)


def _converted(exc: DatasetError, o: AdamOptions) -> DatasetError:
    """A loader's refusal of the converted folder, with each file named by the ADaM file it came from."""
    origin = {PARTICIPANTS_FILE: o.adsl.name, VISITS_FILE: o.bds.name, META_FILE: "the ADaM options",
              BIOMARKERS_FILE: o.markers.name if o.markers else "the ADLB", ICE_FILE: o.adsl.name}
    return DatasetError([replace(p, file=f"{p.file} (converted from {origin.get(p.file, 'the ADaM files')})") for p in exc.problems])
