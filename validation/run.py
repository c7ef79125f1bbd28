"""Run the statistical validation and write validation/RESULTS.md with its CSVs and plots.

    python -m validation.run --all                 # everything (hours on 2 busy cores)
    python -m validation.run --sbc headline        # one check; RESULTS.md is rebuilt from all saved results
    python -m validation.run --sbc-reps 20 --coverage-reps 40 --all --out /tmp/val   # a quick look
    python -m validation.run --sbc headline mmrm --sbc-reps 1000 --workers 2          # a local Dask cluster
    python -m validation.run --sbc headline mmrm --coverage --scheduler tcp://10.0.0.5:8786   # any Dask cluster

SBC and coverage run their replicates in this process (default), on a LocalCluster of --workers
processes, or on the Dask cluster at --scheduler; the same seed gives the same numbers on any of them
(validation/parallel.py). Every check saves a JSON summary and CSVs under --out (default validation/results); RESULTS.md is
rebuilt from whatever summaries exist there, so checks can be rerun one at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .parallel import CONNECT_TIMEOUT_S, ClusterError, dask_client, describe

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
COVERAGE_DRAWS, COVERAGE_TUNE = 300, 300  # per chain, 2 chains
SBC_DRAWS, SBC_TUNE = 600, 400  # per chain, 2 chains: 1200 draws thinned to 99 for ranks


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measured_since(start: dict) -> dict:
    """Date, machine and load when a check started (inference.idata_io.machine_record), with the load now."""
    from inference.idata_io import load_average

    return {**start, "load_end": load_average()}


def save_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n", encoding="utf-8")
    tmp.replace(path)


def save_csv(df, path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
    tmp.replace(path)


SBC_PARAMETERS = {
    "headline": ["nac_change", "time_change", "residual_sd", "participant_sd", "participant_corr", "intercept", "marker_moderation"],
    "treatment": ["nac_change", "time_change", "residual_sd", "participant_sd", "participant_corr", "intercept"],
    # visit_corr: the lower triangle (SBC drops the constant diagonal and the mirrored upper triangle)
    "mmrm": ["nac_visit_effect", "visit_mean", "baseline_slope", "visit_sd", "visit_corr"],
}


SAVE_EVERY_S = 60.0  # a running check rewrites its results at most this often (and at the end)


def check_sbc(name: str, reps: int, seed: int, out: Path, cores: int, report: Path | None = None, client=None) -> dict:
    from .designs import SBC_PARTICIPANTS, sbc_design
    from .sbc import rank_plot, run_sbc

    params = SBC_PARAMETERS[name]
    design = sbc_design()
    n_obs = int(len(design.y))
    log(f"SBC {name}: {reps} replicates, {SBC_PARTICIPANTS} participants, the fused path compiled once per process")
    from inference.idata_io import machine_record

    start = machine_record()
    last = [time.perf_counter()]

    def save(res, final=False):
        n_done = res.settings["n_reps"]
        if not final and time.perf_counter() - last[0] < SAVE_EVERY_S:
            return
        last[0] = time.perf_counter()
        save_csv(res.ranks, out / f"sbc_{name}_ranks.csv")
        save_csv(res.uniformity, out / f"sbc_{name}_uniformity.csv")
        rank_plot(res, out / f"sbc_{name}_ranks.png")
        summary = {
            "check": f"sbc_{name}", "model": name, "participants": SBC_PARTICIPANTS, "observations": n_obs,
            **res.settings, "complete": n_done == reps, "compile_s": res.compile_s, "seconds": res.seconds,
            "divergent_replicates": int(res.ranks.groupby("replicate")["divergences"].first().gt(0).sum()),
            "flagged": [p for p, f in zip(res.uniformity["parameter"], res.uniformity["flagged"]) if f],
            "measured": measured_since(start),
        }
        save_json(out / f"sbc_{name}.json", summary)
        if report:
            write_report(out, report)
        return summary

    res = run_sbc(name, name, design, params, n_reps=reps, seed=seed, draws=SBC_DRAWS, tune=SBC_TUNE, cores=cores, log=log,
                  progress=save, client=client)
    summary = save(res, final=True)
    log(f"SBC {name} done in {res.seconds:.0f} s")
    return summary


def check_coverage(reps: int, seed: int, out: Path, cores: int, report: Path | None = None, client=None) -> dict:
    from .coverage import run_coverage, summarise

    log(f"coverage: {reps} trials of the default design, model 'treatment' on the fused path")
    from inference.idata_io import machine_record

    start = machine_record()
    last = [time.perf_counter()]

    def save(table, info, final=False):
        if not final and time.perf_counter() - last[0] < SAVE_EVERY_S:
            return
        last[0] = time.perf_counter()
        save_csv(table, out / "coverage_trials.csv")
        save_csv(summarise(table), out / "coverage_summary.csv")
        info.update(check="coverage", complete=info["n_trials"] == reps, measured=measured_since(start))
        save_json(out / "coverage.json", info)
        if report:
            write_report(out, report)

    table, info = run_coverage(reps, seed, draws=COVERAGE_DRAWS, tune=COVERAGE_TUNE, cores=cores, log=log, progress=save, fast=True,
                               client=client)
    save(table, info, final=True)
    log(f"coverage done in {info['seconds']:.0f} s")
    return info


def check_agreement(reps: int, seed: int, out: Path, cores: int) -> dict:
    from data import TrialParameters, load_dataset
    from models.design import build_design

    from .agreement import run_agreement
    from .coverage import simulate_designs

    default = build_design(load_dataset(HERE.parent / "data" / "default"))
    designs = [("default", default)] + [(f"simulated seed {s}", d) for s, d, _ in simulate_designs(reps, seed + 7, TrialParameters())]
    log(f"agreement: default dataset + {reps} simulated trials")
    from inference.idata_io import machine_record

    start = machine_record()
    table, info = run_agreement(designs, seed, cores=cores, log=log)
    info["measured"] = measured_since(start)
    save_csv(table, out / "agreement.csv")
    info["check"] = "agreement"
    info["all_agree"] = bool(table["agrees"].all())
    info["max_abs_diff_se"] = float(table["diff_in_se"].abs().max())
    save_json(out / "agreement.json", info)
    log(f"agreement done in {info['seconds']:.0f} s")
    return info


def check_loo_kfold(seed: int, out: Path, k: int = 10) -> dict:
    from data import load_dataset
    from inference.idata_io import machine_record
    from inference.sampling import SamplerSettings
    from models.design import build_design

    from .loo_kfold import run_loo_kfold, single_site_trial

    settings = SamplerSettings(draws=1000, tune=1000, chains=4, seed=seed)
    datasets = [("default", build_design(load_dataset(HERE.parent / "data" / "default")), ["null", "treatment", "headline"]),
                ("single site, no biomarkers", single_site_trial(seed), ["null", "treatment"])]
    log(f"integrated PSIS-LOO vs grouped {k}-fold: {len(datasets)} datasets")
    start = machine_record()
    t0 = time.perf_counter()
    models, pairs = run_loo_kfold(datasets, settings, k=k, log=log)
    info = {"check": "loo_kfold", "k": k, "chains": settings.chains, "draws": settings.draws, "seconds": time.perf_counter() - t0,
            "all_agree": bool(pairs["agrees"].all()), "max_share_k_above_0.7": float(models["share_k_above_0.7"].max()),
            "measured": measured_since(start)}
    save_csv(models, out / "loo_kfold_models.csv")
    save_csv(pairs, out / "loo_kfold_pairs.csv")
    save_json(out / "loo_kfold.json", info)
    log(f"integrated PSIS-LOO vs K-fold done in {info['seconds']:.0f} s")
    return info


def check_reference(models: list[str], report: Path | None, out: Path) -> None:
    from models import registry

    from .reference import generate_reference

    for name in models or list(registry.REGISTRY):
        log(f"reference posterior: {name}")
        try:
            ref = generate_reference(name)
        except Exception as exc:  # one model failing must not lose the others; the report lists what exists
            log(f"reference posterior for {name} failed: {type(exc).__name__}: {exc}")
            continue
        log(f"  {len(ref['parameters'])} parameters, {ref['divergences']} divergences, {ref['seconds']:.0f} s")
        if report:
            write_report(out, report)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Statistical validation: SBC, coverage, frequentist agreement, reference posteriors")
    ap.add_argument("--all", action="store_true", help="run every check")
    ap.add_argument("--sbc", nargs="*", default=None, metavar="MODEL", help="SBC for these models (headline, mmrm, treatment)")
    ap.add_argument("--coverage", action="store_true", help="coverage of the 90%% interval of the week-16 NAC effect")
    ap.add_argument("--agreement", action="store_true", help="agreement with the REML linear mixed model (statsmodels)")
    ap.add_argument("--loo-kfold", action="store_true", help="integrated PSIS-LOO against grouped K-fold at the participant level")
    ap.add_argument("--reference", nargs="*", default=None, metavar="MODEL", help="(re)generate reference posteriors")
    ap.add_argument("--report-only", action="store_true", help="only rebuild RESULTS.md from saved results")
    ap.add_argument("--sbc-reps", type=int, default=100)
    ap.add_argument("--coverage-reps", type=int, default=200)
    ap.add_argument("--agreement-reps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--cores", type=int, default=2, help="chains sampled in parallel per fit in this process (1 on Dask workers)")
    ap.add_argument("--workers", type=int, default=1, help="SBC and coverage on a local Dask cluster of this many processes (1: this process)")
    ap.add_argument("--scheduler", default=None, metavar="ADDRESS", help="SBC and coverage on the Dask cluster at this scheduler address")
    ap.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S, metavar="SECONDS", help="how long to try to reach --scheduler")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    problem = refusal(args)
    if problem:
        log(f"validation.run: {problem}")
        return 2
    if args.report_only:
        args.out.mkdir(parents=True, exist_ok=True)
        refresh_sbc(args.out)
        write_report(args.out, RESULTS_MD if args.out == DEFAULT_OUT else args.out / "RESULTS.md")
        return 0
    sbc_models = args.sbc if args.sbc is not None else (available_sbc_models() if args.all else [])
    report = RESULTS_MD if args.out == DEFAULT_OUT else args.out / "RESULTS.md"
    distributed = bool(sbc_models) or args.coverage or args.all
    try:
        with dask_client(args.workers if distributed else 1, args.scheduler if distributed else None, timeout=args.connect_timeout) as client:
            return run_checks(args, sbc_models, report, client)
    except ClusterError as exc:
        log(f"validation.run: {exc}")
        return 2


def refusal(args) -> str | None:
    """What is wrong with the command line (None: nothing), before anything is computed."""
    unknown = [m for m in args.sbc or [] if m not in SBC_PARAMETERS]
    if unknown:
        return f"no SBC set-up for {unknown}; choose from {sorted(SBC_PARAMETERS)}"
    for flag in ("sbc_reps", "coverage_reps", "agreement_reps", "cores", "workers"):
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be at least 1, not {getattr(args, flag)}"
    if args.scheduler is not None and args.workers > 1:
        return "give --scheduler (an existing cluster) or --workers (a local one), not both"
    if args.connect_timeout <= 0:
        return f"--connect-timeout must be positive, not {args.connect_timeout}"
    return None


def run_checks(args, sbc_models: list[str], report: Path, client) -> int:
    """Every check asked for; SBC and coverage on `client` (None: this process)."""
    cores = args.cores if client is None else 1  # a Dask worker is one process on one core
    args.out.mkdir(parents=True, exist_ok=True)
    if client is not None:
        log(f"SBC and coverage on {describe(client)}")
    if args.coverage or args.all:
        check_coverage(args.coverage_reps, args.seed, args.out, cores, report, client)
    if args.agreement or args.all:
        check_agreement(args.agreement_reps, args.seed, args.out, args.cores)
        write_report(args.out, report)
    if args.loo_kfold or args.all:
        check_loo_kfold(args.seed, args.out)
        write_report(args.out, report)
    if args.reference is not None or args.all:
        check_reference(args.reference or [], report, args.out)
    for name in sbc_models or []:
        check_sbc(name, args.sbc_reps, args.seed, args.out, cores, report, client)
    return 0


def refresh_sbc(out: Path) -> None:
    """Recompute the SBC uniformity tables and plots from the saved ranks (after a change to the tests)."""
    import pandas as pd

    from .sbc import SBCResult, rank_plot, uniformity

    for path in sorted(out.glob("sbc_*.json")):
        s = json.loads(path.read_text(encoding="utf-8"))
        ranks = pd.read_csv(out / f"sbc_{s['model']}_ranks.csv")
        uni = uniformity(ranks, s["n_rank_draws"])
        save_csv(uni, out / f"sbc_{s['model']}_uniformity.csv")
        rank_plot(SBCResult(s["model"], ranks, s["n_rank_draws"], s, s["compile_s"], s["seconds"], uni), out / f"sbc_{s['model']}_ranks.png")
        s["n_reps"] = int(ranks["replicate"].nunique())
        s["complete"] = s["n_reps"] >= s.get("target_reps", s["n_reps"])
        s["divergent_replicates"] = int(ranks.groupby("replicate")["divergences"].first().gt(0).sum())
        s["flagged"] = [p for p, f in zip(uni["parameter"], uni["flagged"]) if f]
        save_json(path, s)


def available_sbc_models() -> list[str]:
    from models import registry

    names = ["headline"]
    names.append("mmrm" if "mmrm" in registry.REGISTRY else "treatment")
    return names


def write_report(out: Path, path: Path) -> None:
    from .report import build_report

    text = build_report(out)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
