"""Command-line options shared by fit.py and diagnose.py: --sensitivity and its options, checked by the one
check of those options (diagnostics.sensitivity_analyses.check_sensitivity_options), spelled as flags; and the ADaM
input options (data.adam_options.add_adam_arguments, also those of `python -m data.adam`), checked by
`check_adam_arguments`."""

from __future__ import annotations

import argparse
from pathlib import Path

from data.adam_options import add_adam_arguments, options_from_args
from diagnostics.sensitivity import DECISION_THRESHOLD
from diagnostics.sensitivity_analyses import check_sensitivity_options, sensitivity_weeks

__all__ = ["CLI_NAMES", "add_adam_arguments", "add_sensitivity_arguments", "check_adam_arguments", "check_sensitivity_arguments"]

CLI_NAMES = {"sensitivity": "--sensitivity", "ice": "--ice", "deltas": "--deltas", "threshold": "--tipping-threshold",
             "weeks": "--sensitivity-weeks"}


def add_sensitivity_arguments(ap: argparse.ArgumentParser) -> None:
    """--sensitivity and its options (fit.py and diagnose.py); check them with `check_sensitivity_arguments`."""
    ap.add_argument("--sensitivity", action="store_true", help="also write, per model that supports them, sensitivity.csv (each "
                    "active arm - control effect under MAR, J2R, CR, CIR and delta adjustment), tipping_point.csv, responders.csv, "
                    "prior_sensitivity.csv and a section in the report (docs/diagnostics.md#estimands-of-the-bundled-trial)")
    ap.add_argument("--ice", type=Path, default=None, metavar="FILE", help="with --sensitivity: intercurrent events, ice.csv "
                    "(participant_id, week, strategy); default: ice.csv in the dataset folder when there is one")
    ap.add_argument("--deltas", type=_deltas, default=None, metavar="D1,D2,...", help="with --sensitivity: delta rows of "
                    "sensitivity.csv, outcome points added to the imputed scores after dropout (default 1/30, 1/15, 1/10 of the "
                    "score range: 2,4,6 on MADRS)")
    ap.add_argument("--tipping-threshold", type=float, default=None, metavar="P", help="with --sensitivity: benefit is concluded "
                    f"while P(benefit) is at least this (default {DECISION_THRESHOLD})")
    ap.add_argument("--sensitivity-weeks", nargs="+", default=None, metavar="W", help="with --sensitivity: the post-baseline "
                    "visits the analyses report: sensitivity.csv's rows, a tipping point per week, the report and the submission "
                    "sensitivity table, e.g. 12 16 (default: sensitivity.csv at every post-baseline week, the rest at the end "
                    "of treatment); a week the trial does not schedule is refused before any work")


def _deltas(text: str) -> tuple[str, ...]:
    """--deltas D1,D2,...: the comma-separated entries (checked as numbers by `check_sensitivity_arguments`)."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def check_sensitivity_arguments(ap: argparse.ArgumentParser, args) -> None:
    """Refuse (argparse usage error, exit 2) sensitivity options that mean nothing; args.deltas becomes numbers and
    args.sensitivity_weeks whole numbers (whether the trial schedules them is checked with the data, before any work)."""
    try:
        args.deltas, _ = check_sensitivity_options(args.deltas, args.tipping_threshold, sensitivity=args.sensitivity, ice=args.ice,
                                                   weeks=args.sensitivity_weeks, names=CLI_NAMES)
        args.sensitivity_weeks = sensitivity_weeks(args.sensitivity_weeks, CLI_NAMES)
    except ValueError as exc:
        ap.error(str(exc))


def check_adam_arguments(ap: argparse.ArgumentParser, args) -> None:
    """Read the ADaM options into args.adam_options (data.adam.AdamOptions, or None without --adam); refuse (argparse usage
    error, exit 2) a malformed one, ADaM options without --adam, and --ice-strategy without --sensitivity or beside --ice."""
    try:
        args.adam_options = options_from_args(args)
    except ValueError as exc:
        ap.error(str(exc))
    if args.ice_strategy is not None:
        if not getattr(args, "sensitivity", False):
            ap.error("--ice-strategy applies only with --sensitivity: the intercurrent events feed the sensitivity analyses; "
                     "pass --sensitivity or leave it out")
        if getattr(args, "ice", None) is not None:
            ap.error("--ice and --ice-strategy are alternatives: give an ice.csv or the strategy map of the ADSL's reasons, not both")
