"""What the ADaM reader is told: the options (AdamOptions), the [adam] table of a dataset.toml beside the ADSL file,
and the command-line options shared by fit.py, diagnose.py and `python -m data.adam` (docs/adam.md).

Every option has a default that follows the CDISC ADaM standard (USUBJID, TRT01P, SITEID, ITTFL, PARAMCD, AVISIT,
AVAL, ABLFL, ANL01FL, DTYPE, EOTSTT, DCTREAS, TRTSDT, TRTEDT ...); the [adam] table declares a trial's choices once,
beside its files, and a command-line option wins over the table. Unknown keys and malformed values are refused
(DatasetError naming dataset.toml, the key and its line), as for the project's own dataset.toml.
"""

from __future__ import annotations

import argparse
import math
import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from .errors import DatasetError, Problem
from .ice import ICE_STRATEGIES
from .meta import COVARIATE_KINDS, META_FILE, _key_line, read_text_file

# Variable roles and their standard ADaM variables. participant_id: the ADSL variable whose values become the
# participant ids of the folder (default: the USUBJID role's variable).
ROLES = {
    "usubjid": "USUBJID",          # ADSL, BDS, ADLB: the subject key joining them
    "participant_id": "",          # ADSL: the ids written to participants.csv ('' = the usubjid variable)
    "studyid": "STUDYID",          # for the title when none is given
    "arm": "TRT01P",               # ADSL planned treatment (else TRTP of the BDS)
    "armn": "TRT01PN",             # ADSL: its numeric code, which orders the active arms
    "site": "SITEID",              # ADSL (else SITEGR1)
    "paramcd": "PARAMCD",
    "param": "PARAM",
    "visitn": "AVISITN",
    "visit": "AVISIT",
    "aval": "AVAL",
    "avalc": "AVALC",              # ADLB: "<0.7" marks a result below the limit of quantification
    "avalu": "AVALU",              # ADLB: the unit
    "lloq": "LLOQ",                # ADLB: the lower limit of quantification
    "base": "BASE",
    "chg": "CHG",
    "ablfl": "ABLFL",
    "anlfl": "ANL01FL",
    "dtype": "DTYPE",
    "adt": "ADT",
    "eotstt": "EOTSTT",            # ADSL end-of-treatment status
    "dctreas": "DCTREAS",          # ADSL reason for discontinuing treatment
    "trtsdt": "TRTSDT",
    "trtedt": "TRTEDT",
    "ontrtfl": "ONTRTFL",          # BDS: 'Y' on a record on treatment (off_treatment: docs/adam.md)
}
DEFAULT_POPULATION_FLAG = "ITTFL"
VISIT_RULES = ("auto", "avisitn")  # auto: weeks parsed from AVISIT ("Baseline", "Week 6", "Day 1"); avisitn: AVISITN is the week
ADAM_TABLE = "adam"
ADAM_KEYS = {
    "param": "the PARAMCD of the outcome",
    "reference": "the control arm",
    "arms": "the arms to analyse, in order (control first or anywhere)",
    "doses": "a dose per arm (table)",
    "scale": "[min, max] of the outcome when the scale is not recognised",
    "population_flag": "the ADSL population flag",
    "covariates": "ADSL variables adjusted for",
    "keep": "ADSL variables copied to participants.csv, not adjusted for",
    "variables": "variable names for the roles (table)",
    "visit_map": "AVISIT -> week (table), or \"avisitn\"",
    "treatment_end": "the last week on treatment",
    "ice_strategy": "reason for discontinuing treatment -> MAR/J2R/CR/CIR (table)",
    "markers": "the PARAMCDs of the biomarkers in the markers file",
    "markers_file": "the ADLB-style file of the biomarkers, relative to dataset.toml",
}
TOP_KEYS = {"title", ADAM_TABLE}
SAS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class AdamOptions:
    """How to read one trial's ADaM datasets. None: not given (the [adam] table, then the default, decides).

    adsl, bds        the subject-level dataset and the BDS dataset of the outcome (.xpt, .sas7bdat, .csv, .parquet)
    param            the outcome's PARAMCD (default: the BDS's only one)
    reference        the control arm (default: the one arm whose name contains "placebo")
    arms             the arms analysed, in order (default: every TRT01P value, ordered by TRT01PN, else sorted)
    doses            arm -> numeric dose ([arms.dose] of the folder)
    scale            (min, max) of the outcome; needed when PARAMCD/PARAM is not a recognised scale
    markers          the ADLB-style dataset of the biomarkers; marker_params: their PARAMCDs
    covariates       ADSL variables adjusted for ("AGE", "SEX", or "VAR:categorical" / "VAR:continuous")
    keep             ADSL variables copied to participants.csv and not adjusted for
    population_flag  the ADSL flag of the analysed population (default ITTFL)
    variables        role -> variable name, overriding ROLES
    visit_map        AVISIT label -> week, or "avisitn" (AVISITN is the week), or "auto" (default)
    treatment_end    the last week on treatment (default: the last week before follow-up visits)
    ice_strategy     reason for discontinuing treatment -> strategy ("*": any other reason)
    title            the trial's title
    config           the dataset.toml whose [adam] table was merged in (set by `resolve_options`)

    scale, visit_map, ice_strategy, variables and doses may be given as the command line writes them ("0:52",
    "Baseline=0,Week 2=2", "ADVERSE EVENT=J2R,*=MAR", ["site=SITEGR1"]) or as tuples and dicts; labels and reasons
    are compared without regard to case. ValueError for a malformed value.
    """

    adsl: Path
    bds: Path
    param: str | None = None
    reference: str | None = None
    arms: tuple[str, ...] | None = None
    doses: dict[str, float] | None = None
    scale: tuple[float, float] | None = None
    markers: Path | None = None
    marker_params: tuple[str, ...] | None = None
    covariates: tuple[str, ...] | None = None
    keep: tuple[str, ...] | None = None
    population_flag: str | None = None
    variables: dict[str, str] | None = None
    visit_map: dict[str, float] | str | None = None
    treatment_end: int | None = None
    ice_strategy: dict[str, str] | None = None
    title: str | None = None
    config: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "adsl", Path(self.adsl))
        object.__setattr__(self, "bds", Path(self.bds))
        if self.markers is not None:
            object.__setattr__(self, "markers", Path(self.markers))
        for name in ("arms", "marker_params", "covariates", "keep"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(str(v) for v in value))
        # values given as text or tables, in any case: read as the command line and the [adam] table read them
        for name, parse in (("scale", parse_scale), ("visit_map", parse_visit_map), ("ice_strategy", parse_ice_strategy),
                            ("variables", parse_variables), ("doses", parse_doses)):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, parse(getattr(self, name)))
        for name in self.covariates or ():
            parse_covariate(name)

    def role(self, name: str) -> str:
        """The variable of a role (upper case): the override, else the standard one."""
        overrides = {k: v.upper() for k, v in (self.variables or {}).items()}
        if name == "participant_id" and name not in overrides:
            return self.role("usubjid")
        return overrides.get(name, ROLES[name])

    def overridden(self, name: str) -> bool:
        return name in (self.variables or {})

    @property
    def flag(self) -> str:
        return (self.population_flag or DEFAULT_POPULATION_FLAG).upper()


# ------------------------------------------------------------------ values, as text (command line) or TOML


def parse_scale(value) -> tuple[float, float]:
    """'0:60' or [0, 60] -> (0.0, 60.0)."""
    parts = value.split(":") if isinstance(value, str) else value
    try:
        lo, hi = (float(x) for x in parts)
    except (TypeError, ValueError):
        raise ValueError(f"the scale must be MIN:MAX, e.g. 0:52 (got {value!r})") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"the scale's MIN must be below its MAX, both finite (got {value!r})")
    return lo, hi


def _pairs(value, what: str, example: str) -> dict[str, str]:
    """'A=1,B=2' or a TOML table -> {key: value text}."""
    if isinstance(value, dict):
        return {str(k).strip(): v for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text such as {example!r} or a table (got {value!r})")
    out = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, eq, val = item.partition("=")
        if not eq or not key.strip() or not val.strip():
            raise ValueError(f"{what}: {item.strip()!r} is not KEY=VALUE; write e.g. {example!r}")
        if key.strip() in out:
            raise ValueError(f"{what}: {key.strip()!r} is given twice")
        out[key.strip()] = val.strip()
    if not out:
        raise ValueError(f"{what} is empty; write e.g. {example!r}")
    return out


def norm_label(text: str) -> str:
    """How visit labels and reasons are compared: case and repeated spaces do not matter."""
    return " ".join(str(text).split()).casefold()


def parse_visit_map(value) -> dict[str, float] | str:
    """'Baseline=0,Week 2=2' or a table -> {AVISIT label (normalised): week}; 'avisitn' or 'auto' as they are."""
    if isinstance(value, str) and value.strip().lower() in VISIT_RULES:
        return value.strip().lower()
    out = {}
    for label, week in _pairs(value, "the visit map", "Baseline=0,Week 2=2").items():
        try:
            w = float(week)
        except (TypeError, ValueError):
            raise ValueError(f"the visit map gives {label!r} the week {week!r}, which is not a number") from None
        if not math.isfinite(w) or w < 0 or not w.is_integer():
            raise ValueError(f"the visit map gives {label!r} the week {week!r}; weeks are whole numbers from baseline (0)")
        out[norm_label(label)] = w
    return out


def parse_ice_strategy(value) -> dict[str, str]:
    """'ADVERSE EVENT=J2R,*=MAR' or a table -> {reason (normalised): strategy}."""
    out = {}
    for reason, strategy in _pairs(value, "the intercurrent-event strategy map", "ADVERSE EVENT=J2R,*=MAR").items():
        s = str(strategy).strip().upper()
        if s not in ICE_STRATEGIES:
            raise ValueError(f"the intercurrent-event strategy map gives {reason!r} the strategy {strategy!r}; "
                             f"one of {', '.join(ICE_STRATEGIES)}")
        out["*" if reason == "*" else norm_label(reason)] = s
    return out


def parse_variables(value) -> dict[str, str]:
    """['ROLE=VAR', ...] or a table -> {role: VAR}."""
    items = value if isinstance(value, dict) else _pairs(",".join(value) if isinstance(value, (list, tuple)) else value,
                                                         "--adam-var", "site=SITEGR1")
    out = {}
    for role, var in items.items():
        role = str(role).strip().lower()
        if role not in ROLES:
            raise ValueError(f"unknown variable role {role!r}; the roles: {', '.join(ROLES)}")
        if not isinstance(var, str) or not SAS_NAME.match(var.strip()):
            raise ValueError(f"the variable of role {role!r} must be a variable name, got {var!r}")
        out[role] = var.strip().upper()
    return out


def parse_covariate(text: str) -> tuple[str, str | None]:
    """'AGE' -> ('AGE', None); 'RACEN:categorical' -> ('RACEN', 'categorical')."""
    name, _, kind = str(text).partition(":")
    name, kind = name.strip(), kind.strip().lower() or None
    if not SAS_NAME.match(name):
        raise ValueError(f"covariate {text!r}: {name!r} is not a variable name")
    if kind is not None and kind not in COVARIATE_KINDS:
        raise ValueError(f"covariate {text!r}: the kind after ':' is one of {', '.join(COVARIATE_KINDS)}")
    return name.upper(), kind


def parse_doses(value) -> dict[str, float]:
    out = {}
    for arm, dose in _pairs(value, "the doses", "placebo=0,low=50,high=100").items():
        try:
            d = float(dose)
        except (TypeError, ValueError):
            raise ValueError(f"the dose of arm {arm!r} is {dose!r}, not a number") from None
        if isinstance(dose, bool) or not math.isfinite(d):
            raise ValueError(f"the dose of arm {arm!r} is {dose!r}, not a finite number")
        out[arm] = d
    return out


# ------------------------------------------------------------------ the [adam] table beside the ADSL file


def config_path(adsl: Path) -> Path:
    return Path(adsl).parent / META_FILE


def _toml_problem(text: str, key: str | None, rule: str, fix: str) -> DatasetError:
    lines = _key_line(text, ADAM_TABLE, key) if key else ()
    return DatasetError([Problem(META_FILE, rule, f"[{ADAM_TABLE}]" + (f" {key}" if key else ""), lines, fix)])


def read_config(path: Path) -> dict:
    """The [adam] table of a dataset.toml as AdamOptions field values (paths resolved beside it); {} when the file has
    no [adam] table. DatasetError for invalid TOML, unknown keys or malformed values."""
    text = read_text_file(path).replace("\r\n", "\n").replace("\r", "\n")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DatasetError([Problem(META_FILE, f"is not valid TOML ({exc}).", fix="check quotes, brackets and '=' signs")]) from None
    if ADAM_TABLE not in raw:
        return {}
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise DatasetError([Problem(META_FILE, f"beside ADaM files holds {unknown}; it may hold only title and an [adam] table.",
                                    fix="move the project's own tables to a dataset folder's dataset.toml, or remove them")])
    table = raw[ADAM_TABLE]
    if not isinstance(table, dict):
        raise _toml_problem(text, None, f"[{ADAM_TABLE}] must be a table.", "write [adam] on its own line, then key = value lines")
    extra = sorted(set(table) - set(ADAM_KEYS))
    if extra:
        raise _toml_problem(text, extra[0], f"unknown key(s) {extra} in [{ADAM_TABLE}]; allowed: {sorted(ADAM_KEYS)}.",
                            "fix the spelling or remove them (docs/adam.md#the-adam-table)")
    out: dict = {"config": path}
    if "title" in raw:
        out["title"] = str(raw["title"])
    for key, value in table.items():
        try:
            out.update(_config_value(key, value, path.parent))
        except ValueError as exc:
            raise _toml_problem(text, key, f"{key} = {value!r}: {exc}.",
                                f"{key} is {ADAM_KEYS[key]} (docs/adam.md#the-adam-table)") from None
    return out


def _strings(value, key) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{key} must be a list of names")
    return tuple(v.strip() for v in value)


def _config_value(key: str, value, folder: Path) -> dict:
    if key in ("param", "reference", "population_flag"):
        if not isinstance(value, str) or not value.strip():
            raise ValueError("it must be a name in quotes")
        return {key: value.strip()}
    if key in ("arms", "keep"):
        return {key: _strings(value, key)}
    if key == "covariates":
        names = _strings(value, key)
        for name in names:
            parse_covariate(name)
        return {key: names}
    if key == "markers":
        return {"marker_params": _strings(value, key)}
    if key == "markers_file":
        if not isinstance(value, str) or not value.strip():
            raise ValueError("it must be a file name in quotes")
        return {"markers": folder / value}
    if key == "scale":
        return {key: parse_scale(value)}
    if key == "doses":
        if not isinstance(value, dict):
            raise ValueError("it must be a table of arm = dose")
        return {key: parse_doses(value)}
    if key == "variables":
        if not isinstance(value, dict):
            raise ValueError("it must be a table of role = \"VARIABLE\"")
        return {key: parse_variables(value)}
    if key == "visit_map":
        return {key: parse_visit_map(value)}
    if key == "treatment_end":
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError("it must be a whole number of weeks after baseline")
        return {key: value}
    if key == "ice_strategy":
        return {key: parse_ice_strategy(value)}
    raise ValueError("unknown key")  # pragma: no cover - ADAM_KEYS is checked first


def resolve_options(options: AdamOptions) -> AdamOptions:
    """`options` completed by the [adam] table of the dataset.toml beside the ADSL file (options given win; variable
    roles are merged, those given winning). Unchanged when there is no such table."""
    path = config_path(options.adsl)
    if options.config is not None or not path.is_file():
        return options
    table = read_config(path)
    if not table:
        return options
    merged = {}
    for f in fields(AdamOptions):
        given = getattr(options, f.name)
        if f.name == "variables":
            both = {**(table.get("variables") or {}), **(given or {})}
            merged["variables"] = both or None
        elif given is None and f.name in table:
            merged[f.name] = table[f.name]
    return replace(options, **merged)


# ------------------------------------------------------------------ the command-line options


# dest -> the option's spelling: the options that mean something only with ADaM files
ADAM_ONLY = {"param": "--param", "reference": "--reference", "scale": "--scale", "markers": "--markers", "covariates": "--covariates",
             "keep": "--keep", "population_flag": "--population-flag", "visit_map": "--visit-map", "treatment_end": "--treatment-end",
             "ice_strategy": "--ice-strategy", "adam_var": "--adam-var"}


def add_adam_arguments(ap: argparse.ArgumentParser, *, files: bool = True) -> None:
    """The ADaM options (fit.py, diagnose.py, python -m data.adam); `files`: with --adam ADSL BDS (else the caller
    takes the two files as positional arguments adsl and bds). Read them with `options_from_args`."""
    g = ap.add_argument_group("ADaM input", "read CDISC ADaM datasets (.xpt, .sas7bdat, .csv, .parquet) instead of a dataset "
                              "folder; an [adam] table in a dataset.toml beside the ADSL file gives the same options (docs/adam.md)")
    if files:
        g.add_argument("--adam", nargs=2, type=Path, default=None, metavar=("ADSL", "BDS"),
                       help="the subject-level dataset and the BDS dataset of the outcome (e.g. adsl.xpt adqs.xpt)")
    g.add_argument("--param", default=None, metavar="PARAMCD", help="the outcome's PARAMCD in the BDS (default: its only one)")
    g.add_argument("--reference", default=None, metavar="ARM", help="the control arm, a TRT01P value (default: the arm whose "
                   "name contains 'placebo')")
    g.add_argument("--scale", default=None, metavar="MIN:MAX", help="the outcome's valid range; needed unless PARAMCD/PARAM "
                   "names a known scale (MADRS, HAM-D 17, BDI-II, PHQ-9, QIDS-SR16, CGI-S)")
    g.add_argument("--markers", nargs="+", default=None, metavar=("ADLB", "PARAMCD"), help="biomarkers: an ADLB-style dataset and the "
                   "PARAMCDs to read from it (e.g. adlb.xpt IL6 CRP BDNF)")
    g.add_argument("--covariates", nargs="+", default=None, metavar="VAR", help="ADSL variables the models adjust for (numeric: "
                   "continuous, character: categorical; VAR:categorical to choose)")
    g.add_argument("--keep", nargs="+", default=None, metavar="VAR", help="ADSL variables copied to participants.csv but not adjusted for")
    g.add_argument("--population-flag", default=None, metavar="FLAG", help=f"the ADSL flag of the analysed population "
                   f"(default {DEFAULT_POPULATION_FLAG}; e.g. FASFL, EFFFL)")
    g.add_argument("--visit-map", default=None, metavar='"Baseline=0,Week 2=2"', help="AVISIT -> week; or 'avisitn' (AVISITN is "
                   "the week); default: weeks read from AVISIT ('Baseline', 'Week 6', 'Day 1')")
    g.add_argument("--treatment-end", type=int, default=None, metavar="W", help="the last week on treatment (default: the last "
                   "week before visits whose AVISIT says follow-up, else the last week)")
    g.add_argument("--ice-strategy", default=None, metavar='"ADVERSE EVENT=J2R,*=MAR"', help="intercurrent events from ADSL "
                   "(EOTSTT, DCTREAS, TRTEDT): the strategy for each reason for discontinuing treatment ('*': any other)")
    g.add_argument("--adam-var", action="append", default=None, metavar="ROLE=VARIABLE", help="another variable for a role, "
                   "e.g. site=SITEGR1 or participant_id=SUBJID (repeat; roles: " + ", ".join(ROLES) + ")")


def options_from_args(args) -> AdamOptions | None:
    """AdamOptions from parsed arguments (None without --adam or the positional adsl/bds); ValueError naming the option for
    a malformed value or for ADaM options given without ADaM files."""
    files = getattr(args, "adam", None)
    if files is None and getattr(args, "adsl", None) is not None:
        files = (args.adsl, args.bds)
    if files is None:
        given = [flag for dest, flag in ADAM_ONLY.items() if getattr(args, dest, None) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --adam ADSL BDS "
                             "(ADaM input); pass --adam or leave them out")
        return None
    values: dict = {}
    for dest, key, parse in (("scale", "scale", parse_scale), ("visit_map", "visit_map", parse_visit_map),
                             ("ice_strategy", "ice_strategy", parse_ice_strategy), ("adam_var", "variables", parse_variables)):
        if getattr(args, dest, None) is not None:
            values[key] = _option(ADAM_ONLY[dest], parse, getattr(args, dest))
    for name in args.covariates or ():
        _option("--covariates", parse_covariate, name)
    if args.markers is not None:
        if len(args.markers) < 2:
            raise ValueError("--markers takes the ADLB file and at least one PARAMCD, e.g. --markers adlb.xpt IL6 CRP")
        values["markers"], values["marker_params"] = Path(args.markers[0]), tuple(args.markers[1:])
    if args.treatment_end is not None and args.treatment_end <= 0:
        raise ValueError("--treatment-end is a week after baseline (a whole number above 0)")
    return AdamOptions(Path(files[0]), Path(files[1]), param=args.param, reference=args.reference, covariates=args.covariates,
                       keep=args.keep, population_flag=args.population_flag, treatment_end=args.treatment_end, **values)


def _option(flag: str, parse, value):
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None
