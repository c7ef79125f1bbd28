"""dataset.toml: what a dataset says about itself (scale, arms, schedule, marker units).

Keeping these facts in metadata rather than in code is what lets the same models run on
MADRS, HAM-D or BDI trials with other visit schedules.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DatasetError, Problem

META_FILE = "dataset.toml"

# Size guard: a trial export is a few hundred kB; a file far larger is almost surely the wrong file
# (a database dump, an imaging table) and would otherwise exhaust memory before any check runs.
MAX_FILE_BYTES = 200 * 1024**2
MAX_FILE_ENV = "DEPTRIAL_MAX_FILE_BYTES"

# How visits off the schedule are treated: "none" rejects them, "nearest" maps a visit within
# `window` weeks of a scheduled week to that week (each mapping is listed in the load's changes).
MAP_UNSCHEDULED = ("none", "nearest")

# Allowed keys of each dataset.toml table: anything else is a typo that would otherwise be ignored.
# ([covariates] is not listed: its keys are column names of participants.csv, checked against the file.)
ALLOWED_KEYS = {
    "": {"title", "outcome", "arms", "schedule", "biomarkers", "covariates"},
    "outcome": {"name", "label", "min", "max", "integer"},
    "arms": {"control", "treatment", "dose"},
    "schedule": {"weeks", "treatment_end", "map_unscheduled", "window"},
    "biomarkers": {"weeks", "units", "detection_limit"},
}


# Kinds of a baseline covariate declared under [covariates] (models/design.py codes them).
COVARIATE_KINDS = ("continuous", "categorical")
# participants.csv columns with a fixed meaning, which cannot be declared as covariates
RESERVED_COLUMNS = ("participant_id", "arm", "site", "withdrew_consent")


def max_file_bytes(override: int | None = None) -> int:
    """The size limit in force: an explicit override, else $DEPTRIAL_MAX_FILE_BYTES, else MAX_FILE_BYTES."""
    if override is not None:
        return int(override)
    env = os.environ.get(MAX_FILE_ENV, "").strip()
    return int(env) if env.isdigit() else MAX_FILE_BYTES


def _size_text(n: int) -> str:
    return f"{n / 1024**2:.1f} MB" if n >= 1024**2 else f"{n} bytes"


def read_text_file(path: Path, limit: int | None = None) -> str:
    """A dataset file's text: exists, is a file, within the size guard, UTF-8 (a BOM is accepted).

    Raises DatasetError naming the file with the fix for each failure (missing, folder, too big,
    Excel workbook, UTF-16, Latin-1/Windows-1252).
    """
    path = Path(path)
    name = path.name
    if not path.exists():
        raise DatasetError([Problem(name, f"is missing from {path.parent}.", fix="see README, 'Data interface' for the files a dataset folder needs")])
    if not path.is_file():
        raise DatasetError([Problem(name, f"is not a regular file (in {path.parent}).", fix=f"{name} must be a text file")])
    limit = max_file_bytes(limit)
    size = path.stat().st_size
    if size > limit:
        raise DatasetError(
            [
                Problem(
                    name,
                    f"is {_size_text(size)}, above the loader's size limit of {_size_text(limit)}.",
                    fix=f"check it is the right file (a trial export is usually well under 1 MB); "
                    f"to load it anyway raise the limit with the environment variable {MAX_FILE_ENV}",
                )
            ]
        )
    raw = path.read_bytes()
    if raw[:4] == b"PK\x03\x04":
        raise DatasetError([Problem(name, "is a zip archive (an Excel .xlsx workbook?), not a text file.", fix="save it from the spreadsheet as 'CSV UTF-8 (comma delimited)'")])
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DatasetError([Problem(name, "is UTF-16 text (an Excel 'Unicode text' export).", fix="save it as UTF-8 ('CSV UTF-8 (comma delimited)')")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError(
            [
                Problem(
                    name,
                    f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start} cannot be decoded; "
                    "Latin-1 or Windows-1252 exports do this with accented letters).",
                    lines=(line,),
                    fix="re-export the file as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet, or iconv -f latin1 -t utf-8)",
                )
            ]
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DatasetError([Problem(name, "contains NUL bytes: it is a binary file, not text.", lines=(line,), fix="export the data as a UTF-8 text file")])
    return text


# What a unit string may contain (e.g. pg/mL, mg/L, 10^9/L, µmol/L, %): catches stray separators and blanks.
UNIT_TEXT = re.compile(r"^[A-Za-z0-9µμ%/.^*·() -]*[A-Za-zµμ%]+[A-Za-z0-9µμ%/.^*·() -]*$")

# Known rating scales: name -> (min, max). Used only to give helpful defaults and messages.
KNOWN_SCALES = {"madrs": (0, 60), "hamd": (0, 52), "hamd17": (0, 52), "bdi": (0, 63), "bdi2": (0, 63)}


@dataclass(frozen=True)
class DatasetMeta:
    """Validated contents of dataset.toml."""

    outcome: str = "madrs"
    outcome_label: str = "MADRS"
    score_min: float = 0
    score_max: float = 60
    integer_scores: bool = True
    control_arm: str = "placebo"
    treatment_arms: tuple[str, ...] = ("nac",)  # the active arms, in declared order (each compared with control_arm)
    weeks: tuple[int, ...] = (0, 2, 4, 6, 8, 12, 16)
    treatment_end: int = 12
    map_unscheduled: str = "none"  # or "nearest": visits within `unscheduled_window` weeks move to the scheduled week
    unscheduled_window: float = 0.0
    biomarker_weeks: tuple[int, ...] = (0, 12)
    marker_units: dict[str, str] = field(default_factory=dict)
    detection_limits: dict[str, float] = field(default_factory=dict)
    title: str = ""
    covariates: dict[str, str] = field(default_factory=dict)  # participants.csv column -> "continuous" or "categorical"
    doses: dict[str, float] = field(default_factory=dict)  # [arms.dose]: arm -> numeric dose (every arm), or empty

    @property
    def arms(self) -> tuple[str, ...]:
        """Every arm, the control (reference) first, then the active arms in declared order (arm index 0, 1, ...)."""
        return (self.control_arm, *self.treatment_arms)

    @property
    def n_arms(self) -> int:
        return 1 + len(self.treatment_arms)

    @property
    def treatment_arm(self) -> str:
        """The active arm of a two-arm trial; a trial with several active arms has no single one (ValueError)."""
        if len(self.treatment_arms) != 1:
            raise ValueError(f"this trial has {len(self.treatment_arms)} active arms {list(self.treatment_arms)}; "
                             "name the arm (a statement about one arm of a multi-arm trial needs its label)")
        return self.treatment_arms[0]

    @property
    def followup_weeks(self) -> tuple[int, ...]:
        return tuple(w for w in self.weeks if w > self.treatment_end)

    @property
    def last_week(self) -> int:
        return max(self.weeks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weeks"] = list(self.weeks)
        d["biomarker_weeks"] = list(self.biomarker_weeks)
        d["treatment_arms"] = list(self.treatment_arms)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetMeta":
        """The inverse of to_dict (a two-arm record with a single 'treatment_arm' is read too)."""
        d = dict(d)
        if "treatment_arm" in d:
            d["treatment_arms"] = [d.pop("treatment_arm")]
        for key in ("weeks", "biomarker_weeks", "treatment_arms"):
            d[key] = tuple(d[key])
        return cls(**d)

    def to_toml(self) -> str:
        """Serialise back to dataset.toml text (used by the synthetic generator and round-trip tests)."""

        def q(s):
            return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = []
        if self.title:
            lines.append(f"title = {q(self.title)}")
        lines += [
            "",
            "[outcome]",
            f"name = {q(self.outcome)}",
            f"label = {q(self.outcome_label)}",
            f"min = {_num(self.score_min)}",
            f"max = {_num(self.score_max)}",
            f"integer = {'true' if self.integer_scores else 'false'}",
            "",
            "[arms]",
            f"control = {q(self.control_arm)}",
            "treatment = " + (q(self.treatment_arms[0]) if len(self.treatment_arms) == 1
                              else "[" + ", ".join(q(a) for a in self.treatment_arms) + "]"),
            "",
            "[schedule]",
            f"weeks = [{', '.join(str(w) for w in self.weeks)}]",
            f"treatment_end = {self.treatment_end}",
        ]
        if self.doses:
            at = lines.index("[schedule]") - 1
            lines[at:at] = ["", "[arms.dose]", *[f"{_key(a)} = {_num(v)}" for a, v in self.doses.items()]]
        if self.map_unscheduled != "none":
            lines += [f"map_unscheduled = {q(self.map_unscheduled)}", f"window = {_num(self.unscheduled_window)}"]
        if self.marker_units:
            lines += ["", "[biomarkers]", f"weeks = [{', '.join(str(w) for w in self.biomarker_weeks)}]"]
            lines += ["", "[biomarkers.units]"]
            lines += [f"{k} = {q(v)}" for k, v in self.marker_units.items()]
            if self.detection_limits:
                lines += ["", "[biomarkers.detection_limit]"]
                lines += [f"{k} = {_num(v)}" for k, v in self.detection_limits.items()]
        if self.covariates:
            lines += ["", "[covariates]"]
            lines += [f"{_key(k)} = {q(v)}" for k, v in self.covariates.items()]
        return "\n".join(lines).lstrip() + "\n"


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _key(name: str) -> str:
    """A TOML key: bare when it can be, quoted otherwise (a column name may hold spaces or dots)."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _arms(arms, text: str = "") -> tuple[str, tuple[str, ...], dict[str, float]]:
    """[arms]: the control label, the active arms (one label, or a list of labels for a multi-arm trial) and the
    optional [arms.dose] table (a number for every arm)."""
    if not isinstance(arms, dict):
        raise _bad(f"[arms] must be a table, got {arms!r}.", "arms", 'write control = "placebo" and treatment = "nac" under [arms]')
    control = arms.get("control", "placebo")
    treatment = arms.get("treatment", "nac")
    if not isinstance(control, str) or not control.strip():
        raise _bad(f"arms.control must be one arm label, got {control!r}.", "arms", 'e.g. control = "placebo"')
    listed = [treatment] if isinstance(treatment, str) else treatment
    if not isinstance(listed, list) or not listed or not all(isinstance(a, str) and a.strip() for a in listed):
        raise _bad(f"arms.treatment must be an arm label or a list of labels, got {treatment!r}.", "arms",
                   'e.g. treatment = "nac", or treatment = ["low", "high"] for several active arms')
    line = _key_line(text, "arms", "treatment")
    repeated = sorted({a for a in listed if listed.count(a) > 1})
    if repeated:
        raise _bad(f"arms.treatment lists {repeated} more than once.", "arms", "list each active arm once", line)
    if control in listed:
        raise _bad(f"arm {control!r} is both the control and a treatment arm.", "arms",
                   "give the control arm and every treatment arm different labels, as in participants.csv", line)
    dose = arms.get("dose", {})
    if not isinstance(dose, dict):
        raise _bad(f"[arms.dose] must map each arm to a number, got {dose!r}.", "arms.dose", "e.g. placebo = 0, low = 50, high = 100")
    everyone = [control, *listed]
    if dose:
        unknown = [a for a in dose if a not in everyone]
        absent = [a for a in everyone if a not in dose]
        bad = [a for a, v in dose.items() if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)]
        if unknown or absent or bad:
            why = "; ".join(x for x in (unknown and f"arms not declared under [arms]: {unknown}",
                                        absent and f"arms without a dose: {absent}",
                                        bad and f"doses that are not numbers: {bad}") if x)
            raise _bad(f"[arms.dose] must give a number for every declared arm ({why}).", "arms.dose",
                       "one line per arm of [arms], e.g. " + ", ".join(f"{_key(a)} = {i}" for i, a in enumerate(everyone)))
    return control, tuple(listed), {a: float(dose[a]) for a in everyone} if dose else {}


def _covariate_kinds(raw, text: str = "") -> dict[str, str]:
    """[covariates]: participants.csv column -> kind, in the order declared (`text`: the file, for line numbers)."""
    if raw is None:
        return {}
    fix = 'one line per column of participants.csv, e.g. age = "continuous" and sex = "categorical"'
    if not isinstance(raw, dict):
        raise _bad(f"[covariates] must be a table of column = kind lines, got {raw!r}.", "covariates", fix)
    out = {}
    for name, kind in raw.items():
        if not str(name).strip():
            raise _bad("[covariates] has an empty column name.", "covariates", fix)
        line = _key_line(text, "covariates", str(name))
        if name in RESERVED_COLUMNS:
            raise _bad(f"'{name}' cannot be a covariate: it is a participants.csv column with its own meaning "
                       f"({', '.join(RESERVED_COLUMNS)}).", "covariates",
                       "remove it from [covariates] (the site is always adjusted for; the arm is the treatment)", line)
        if not isinstance(kind, str) or kind not in COVARIATE_KINDS:
            raise _bad(f"covariate '{name}' has kind {kind!r}; the kinds are {list(COVARIATE_KINDS)}.", "covariates",
                       f'write {_key(str(name))} = "continuous" for a number (e.g. age) or "categorical" for a label (e.g. sex)', line)
        out[str(name)] = kind
    return out


def _bad(rule: str, key: str | None = None, fix: str | None = None, lines: tuple[int, ...] = ()) -> DatasetError:
    col = f"[{key}]" if key else None
    return DatasetError([Problem(META_FILE, rule, col, tuple(lines), fix)])


def _key_line(text: str, table: str, key: str) -> tuple[int, ...]:
    """The line of `key = ...` under the [table] header of TOML text (empty when not found)."""
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\s*([^\[\]]+?)\s*\]", stripped.split("#")[0].strip())
        if header:
            current = header.group(1)
            continue
        if current == table and re.match(r'\s*["\']?' + re.escape(key) + r'["\']?\s*=', line):
            return (number,)
    return ()


def _int_list(value, key) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _bad(f"'{key}' must be a non-empty list of whole weeks, got {value!r}.", key, "e.g. weeks = [0, 2, 4, 8, 12]")
    if sorted(set(value)) != list(value):
        raise _bad(f"'{key}' must be strictly increasing with no repeats, got {value!r}.", key, "list each week once, in increasing order")
    if value[0] < 0:
        raise _bad(f"'{key}' cannot contain negative weeks, got {value!r}.", key, "count weeks from randomisation (baseline = 0)")
    return tuple(value)


def parse_meta(text: str) -> DatasetMeta:
    """Parse and validate dataset.toml text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _bad(f"is not valid TOML ({exc}).", fix="check quotes, brackets and '=' signs") from None
    known = ALLOWED_KEYS[""]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _bad(f"unknown section(s) {unknown}; allowed: {sorted(known)}.", fix="remove or rename them")
    for section, keys in ALLOWED_KEYS.items():
        if not section or section not in raw:
            continue
        if not isinstance(raw[section], dict):
            raise _bad(f"[{section}] must be a table (a [{section}] header followed by key = value lines), got {raw[section]!r}.", section, f"write [{section}] on its own line, then its keys")
        extra = sorted(set(raw[section]) - keys)
        if extra:
            raise _bad(f"unknown key(s) {extra} in [{section}]; allowed: {sorted(keys)}.", section, "fix the spelling or remove them")

    out = raw.get("outcome", {})
    if not isinstance(out, dict):
        raise _bad("[outcome] must be a table.", "outcome", "write [outcome] on its own line, then name = ..., min = ..., max = ...")
    name = str(out.get("name", "madrs"))
    if not name.isidentifier():
        raise _bad(f"outcome name {name!r} must be a simple column name (letters, digits, underscore).", "outcome", "use the score column's header in visits.csv, e.g. name = \"madrs\"")
    default_range = KNOWN_SCALES.get(name.lower())
    if ("min" not in out or "max" not in out) and default_range is None:
        raise _bad(
            f"outcome '{name}' is not a known scale {sorted(KNOWN_SCALES)}, so its valid range must be given.",
            "outcome",
            "add min = ... and max = ... under [outcome]",
        )
    lo = out.get("min", default_range[0] if default_range else None)
    hi = out.get("max", default_range[1] if default_range else None)
    for key, val in (("min", lo), ("max", hi)):
        if not isinstance(val, (int, float)) or isinstance(val, bool):
            raise _bad(f"outcome {key} must be a number, got {val!r}.", "outcome", f"write e.g. {key} = 0 without quotes")
    if not lo < hi:
        raise _bad(f"outcome min ({lo}) must be below max ({hi}).", "outcome", "swap or correct min and max under [outcome]")
    integer = out.get("integer", True)
    if not isinstance(integer, bool):
        raise _bad(f"outcome 'integer' must be true or false, got {integer!r}.", "outcome", "write integer = true or integer = false (no quotes)")

    control, treatments, doses = _arms(raw.get("arms", {}), text)

    sched = raw.get("schedule", {})
    weeks = _int_list(sched.get("weeks", [0, 2, 4, 6, 8, 12, 16]), "schedule.weeks")
    if weeks[0] != 0:
        raise _bad(f"schedule.weeks must start with the baseline week 0, got {list(weeks)}.", "schedule", "add week 0 (the baseline visit) first")
    if len(weeks) < 2:
        raise _bad("schedule.weeks needs at least one visit after baseline.", "schedule", "list the post-baseline visit weeks too")
    tend = sched.get("treatment_end", max(weeks))
    if not isinstance(tend, int) or isinstance(tend, bool) or tend not in weeks or tend == 0:
        raise _bad(
            f"schedule.treatment_end must be one of the scheduled weeks after 0, got {tend!r}.",
            "schedule",
            f"choose from {list(weeks[1:])}",
        )

    mapping = sched.get("map_unscheduled", "none")
    if mapping not in MAP_UNSCHEDULED:
        raise _bad(f"schedule.map_unscheduled must be one of {list(MAP_UNSCHEDULED)}, got {mapping!r}.", "schedule", "write map_unscheduled = \"nearest\" (with window = weeks) or remove it")
    window = sched.get("window", 1 if mapping == "nearest" else 0)
    if not isinstance(window, (int, float)) or isinstance(window, bool) or window < 0:
        raise _bad(f"schedule.window must be a non-negative number of weeks, got {window!r}.", "schedule", "e.g. window = 1")
    if mapping == "nearest" and window <= 0:
        raise _bad("schedule.map_unscheduled = \"nearest\" needs a window > 0 (weeks).", "schedule", "e.g. window = 1")
    if "window" in sched and mapping == "none":
        raise _bad("schedule.window is set but map_unscheduled is \"none\", so it would be ignored.", "schedule",
                   "add map_unscheduled = \"nearest\" or remove window")

    bio = raw.get("biomarkers", {})
    bweeks = _int_list(bio.get("weeks", [0, tend]), "biomarkers.weeks") if bio else (0, tend)
    units = bio.get("units", {}) if bio else {}
    if not isinstance(units, dict) or not all(isinstance(v, str) for v in units.values()):
        raise _bad("[biomarkers.units] must map each marker name to a unit string.", "biomarkers.units", "e.g. il6 = \"pg/mL\"")
    for k, v in units.items():
        if not UNIT_TEXT.match(v):
            raise _bad(f"unit of '{k}' is {v!r}, which is not a unit (letters, digits, µ, /, %, ., ^, spaces).", "biomarkers.units",
                       'write the unit as the lab reports it, e.g. "pg/mL", "mg/L", "ng/mL"')
    lods = bio.get("detection_limit", {}) if bio else {}
    if not isinstance(lods, dict):
        raise _bad("[biomarkers.detection_limit] must map marker names to numbers.", "biomarkers.detection_limit", "e.g. il6 = 0.7")
    for k, v in lods.items():
        if k not in units:
            raise _bad(f"detection limit given for marker '{k}' that has no unit in [biomarkers.units].", "biomarkers.detection_limit", "declare the marker's unit or remove its limit")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise _bad(f"detection limit of '{k}' must be a positive number, got {v!r}.", "biomarkers.detection_limit", "write the assay's limit in the marker's unit, e.g. il6 = 0.7")
    if bio and 0 not in bweeks:
        raise _bad(f"biomarkers.weeks must include baseline week 0, got {list(bweeks)}.", "biomarkers", "add 0 to [biomarkers] weeks")

    return DatasetMeta(
        outcome=name,
        outcome_label=str(out.get("label", name.upper())),
        score_min=lo,
        score_max=hi,
        integer_scores=integer,
        control_arm=control,
        treatment_arms=treatments,
        doses=doses,
        weeks=weeks,
        treatment_end=tend,
        map_unscheduled=mapping,
        unscheduled_window=float(window),
        biomarker_weeks=bweeks,
        marker_units=dict(units),
        detection_limits={k: float(v) for k, v in lods.items()},
        title=str(raw.get("title", "")),
        covariates=_covariate_kinds(raw.get("covariates"), text),
    )


def read_meta(folder: Path, limit: int | None = None) -> DatasetMeta:
    text = read_text_file(Path(folder) / META_FILE, limit)
    return parse_meta(text.replace("\r\n", "\n").replace("\r", "\n"))  # any line ending, as for the CSVs
