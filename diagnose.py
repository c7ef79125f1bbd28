#!/usr/bin/env python
"""Re-run the diagnostics, model comparison and report on a saved results folder, without refitting.

    python diagnose.py results                        # PPC, LOO, comparison, report.html from the saved fits
    python diagnose.py results --remission-cutoff 10  # another remission definition
    python diagnose.py results --kfold 5              # also run the refits for high Pareto k (needs the data)
    python diagnose.py results --kfold 5 --refit-levels participant visit
    python diagnose.py results --sensitivity          # J2R, CR, CIR, tipping point, responders, prior sensitivity
    python diagnose.py results --sensitivity --sensitivity-weeks 16   # ... reported at week 16 (the follow-up)
    python diagnose.py results --contrast "high - low" # contrasts.csv again, with this contrast
    python diagnose.py results --sensitivity --adam adsl.xpt adqs.xpt --ice-strategy "ADVERSE EVENT=J2R,*=MAR"
                                                      # intercurrent events from the ADSL of ADaM datasets (docs/adam.md)

Everything is recomputed from each <model>/idata.nc and written back into the folder (each file
atomically): convergence, PPC and LOO tables, figures, comparison_*.csv, comparison.txt, report.html.
With --kfold K, units with Pareto k above the threshold are recomputed by refitting (exact leave-out
or grouped K-fold), which needs the dataset the fits were made from, unchanged (checked by checksum).
With --sensitivity, every saved model's sensitivity analyses are (re)computed from its posterior and
written beside it (sensitivity.csv, tipping_point.csv, responders.csv, prior_sensitivity.csv); without
it, such tables already in the folder are shown in the report as they are. With --contrast (as for
fit.py), every saved model's contrasts.csv is recomputed with those contrasts; without it, the saved
contrasts.csv files are shown as they are. With --adam (and --sensitivity), the intercurrent events come from the ADSL
of the ADaM datasets the fits were made from (EOTSTT, DCTREAS, TRTEDT, mapped to strategies by --ice-strategy or the
[adam] table), checked to give the fits' participants, arms and scores.

Exit codes: 0 success; 1 a convergence verdict failed under --strict; 2 bad arguments, or a folder that
cannot be read (or is being written by another run), refused before any work; 3 a failure once the saved
fits are read (diagnostics, refits, sensitivity analyses, writing): the message names the stage, and the
saved fits are never changed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")


def parse_args(argv):
    from deptrial.cli import add_adam_arguments, add_sensitivity_arguments, check_adam_arguments, check_sensitivity_arguments
    from diagnostics.ppc import REMISSION_CUTOFF

    ap = argparse.ArgumentParser(prog="diagnose.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a results folder written by fit.py")
    ap.add_argument("--remission-cutoff", type=float, default=REMISSION_CUTOFF, help="remission: score at or below this")
    ap.add_argument("--kfold", type=int, default=0, help="refit units with high Pareto k (K folds when many); 0: no refits (default)")
    ap.add_argument("--refit-levels", nargs="+", default=["participant"], choices=("participant", "visit"), help="LOO levels whose high-k units are refitted (with --kfold)")
    ap.add_argument("--seed", type=int, default=None, help="seed for refits and the responder imputations (default: the fits' seed)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any convergence verdict fails")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--contrast", action="append", default=None, metavar='"A - B"', help="recompute every model's contrasts.csv "
                    "with this contrast of the arm means (repeat for several; syntax as for fit.py --contrast)")
    add_sensitivity_arguments(ap)
    add_adam_arguments(ap)
    args = ap.parse_args(argv)
    if args.kfold < 0 or args.kfold == 1:
        ap.error("--kfold must be 0 (no refits) or at least 2")
    check_adam_arguments(ap, args)
    if args.adam_options is not None and not args.sensitivity:
        ap.error("--adam in diagnose.py gives the intercurrent events of the sensitivity analyses: pass --sensitivity "
                 "(with --ice-strategy, or ice_strategy in the [adam] table)")
    if args.adam_options is not None and args.ice is not None:
        ap.error("--ice and --adam are alternatives: give an ice.csv or the ADaM files whose ADSL gives the intercurrent events")
    check_sensitivity_arguments(ap, args)
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    from data.atomic import OutputBusy
    from deptrial.api import RunFailed, rediagnose

    try:
        run, report = rediagnose(args.results, kfold=args.kfold, refit_levels=args.refit_levels, seed=args.seed,
                                 remission_cutoff=args.remission_cutoff, quiet=args.quiet, sensitivity=args.sensitivity,
                                 ice=args.ice, deltas=args.deltas, tipping_threshold=args.tipping_threshold, contrasts=args.contrast,
                                 adam=args.adam_options, sensitivity_weeks=args.sensitivity_weeks)
    except RunFailed as exc:  # once the saved fits are read: the stage that failed, and what the folder holds
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (FileNotFoundError, OSError, ValueError, OutputBusy) as exc:  # refused before any work
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, m in run.models.items():
        print(f"{name}: convergence {'PASS' if m.verdict.ok else 'FAIL'}; {m.ppc.text() if m.ppc is not None else 'compared on the integrated densities (no checks of the scores)'}")
    for level, sentence in run.plain_language.items():
        print(f"comparison ({level} level): {sentence}")
    for note in run.comparison_notes:
        print(f"note: {note}")
    if args.sensitivity:
        for name, sens in run.sensitivity.items():
            print(f"{name}: wrote {', '.join(f'{t}.csv' for t in sens.tables)}"
                  + (f"; {sens.tipping_message}" if sens.tipping_message else ""))
    print(f"report: {report}")
    if args.strict and not all(m.verdict.ok for m in run.models.values()):
        print("strict: convergence verdict failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
