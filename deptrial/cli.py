"""Command-line options shared by fit.py and diagnose.py: --sensitivity and its options, checked by the one
check of those options (diagnostics.sensitivity_analyses.check_sensitivity_options), spelled as flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from diagnostics.sensitivity import DECISION_THRESHOLD
from diagnostics.sensitivity_analyses import check_sensitivity_options

CLI_NAMES = {"sensitivity": "--sensitivity", "ice": "--ice", "deltas": "--deltas", "threshold": "--tipping-threshold"}


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


def _deltas(text: str) -> tuple[str, ...]:
    """--deltas D1,D2,...: the comma-separated entries (checked as numbers by `check_sensitivity_arguments`)."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def check_sensitivity_arguments(ap: argparse.ArgumentParser, args) -> None:
    """Refuse (argparse usage error, exit 2) sensitivity options that mean nothing; args.deltas becomes numbers."""
    try:
        args.deltas, _ = check_sensitivity_options(args.deltas, args.tipping_threshold, sensitivity=args.sensitivity, ice=args.ice,
                                                   names=CLI_NAMES)
    except ValueError as exc:
        ap.error(str(exc))
