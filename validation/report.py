"""Build validation/RESULTS.md from the saved check summaries (JSON + CSV under the results folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def _load(out: Path, name: str) -> dict | None:
    p = out / f"{name}.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


def _table(df: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(floatfmt.format(v) if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _count(done: int, target: int | None, noun: str) -> str:
    if target is None or done >= target:
        return f"{done} {noun}"
    return f"{done} {noun} (**incomplete: only {done} of the {target} planned were run**)"


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def _path(s: dict) -> str:
    """How the replicates were fitted and where, when the summary says."""
    if s.get("fit_path") != "fused":
        return ""
    kernel = f" (`{', '.join(s['fused_kernel'])}`)" if s.get("fused_kernel") else ""
    return (f" on the fused path, as `fit.py` fits: the fast variant through its fused log density{kernel}, compiled once and given "
            f"each replicate's data; run on {s.get('ran_on', 'this process')}")


def _per_fit(s: dict) -> str:
    if "fit_s_per_replicate" not in s:
        return ""
    cpu = f", {s['fit_cpu_s_per_replicate']:.2f} s CPU" if "fit_cpu_s_per_replicate" in s else ""
    return f" ({s['fit_s_per_replicate']:.2f} s wall{cpu} per replicate's fit)"


def sbc_section(out: Path) -> list[str]:
    lines = ["## Simulation-based calibration", ""]
    found = False
    for path in sorted(out.glob("sbc_*.json")):
        s = json.loads(path.read_text(encoding="utf-8"))
        found = True
        uni = pd.read_csv(out / f"sbc_{s['model']}_uniformity.csv")
        lines += [
            f"### {s['model']}",
            "",
            f"{_count(s['n_reps'], s.get('target_reps'), 'replicates')} on a {s['participants']}-participant design ({s['observations']} visits); "
            f"each replicate draws parameters and data from the prior predictive and fits {s['chains']} chains x "
            f"{s['draws']} draws ({s['tune']} tuning){_path(s)}, ranks among {s['n_rank_draws']} thinned draws. "
            f"Compile {_minutes(s['compile_s'])} (once{' per worker' if s.get('ran_on', 'this process') != 'this process' else ''}), "
            f"whole check {_minutes(s['seconds'])}{_per_fit(s)}. "
            f"Replicates with any divergence: {s['divergent_replicates']}.",
            "",
            _table(uni[["parameter", "replicates", "bins", "chi2", "p_value", "p_extreme", "mean_z", "sd_z", "extreme_rank_share", "min_ess_bulk"]]),
            "",
            "`p_value`: chi-square test of equal-width rank bins; `p_extreme`: binomial test of the count of true values outside "
            "every thinned posterior draw (2% per replicate when calibrated); `mean_z`, `sd_z`: mean and SD of "
            "(posterior mean - truth) / posterior SD (about 0 and at most 1 when calibrated).",
            "",
            f"Flagged (either p < 0.01): {', '.join(s['flagged']) or 'none'}. Rank histograms: `results/sbc_{s['model']}_ranks.png`.",
            "",
        ]
    if not found:
        lines += ["(not run yet)", ""]
    return lines


def _coverage_path(info: dict) -> str:
    if info.get("fit_path") == "fused":
        return f"as `fit.py` fits it, the fast variant through its fused log density, on {info.get('ran_on', 'this process')}; "
    if info.get("fit_path") == "graph":
        return "the plain model's compiled graph with each trial's data swapped in; "
    return ""


def coverage_section(out: Path) -> list[str]:
    lines = ["## Coverage at fixed true values", ""]
    info = _load(out, "coverage")
    if info is None:
        return lines + ["(not run yet)", ""]
    summ = pd.read_csv(out / "coverage_summary.csv")
    lines += [
        f"{_count(info['n_trials'], info.get('target_trials'), 'trials')} of {info['participants']} participants simulated by `data.synthetic` at its default true values "
        f"(seeds from {info['seed']}), each fitted by the `{info['model']}` model ({info['chains']} chains x {info['draws']} draws, "
        f"{info['tune']} tuning; {_coverage_path(info)}compiled once in {_minutes(info['compile_s'])}). Whole check {_minutes(info['seconds'])}. "
        f"Intervals are equal-tailed {info['interval_prob']:.0%} posterior intervals of the NAC - placebo difference; "
        "`coverage_mcse` is the binomial Monte Carlo SE of the coverage at its nominal value.",
        "",
        _table(summ),
        "",
    ]
    return lines


def agreement_section(out: Path) -> list[str]:
    lines = ["## Agreement with the REML linear mixed model", ""]
    info = _load(out, "agreement")
    if info is None:
        return lines + ["(not run yet)", ""]
    tab = pd.read_csv(out / "agreement.csv")
    n_sim = info["n_datasets"] - 1
    lines += [
        f"The `{info['model']}` model with the NAC and time priors widened {info['prior_widening']:g}x versus "
        f"{info['comparator']}, on the default dataset and {n_sim} simulated trials ({info['chains']} chains x {info['draws']} draws). "
        f"Tolerance: |posterior mean - REML estimate| <= {info['tolerance_se']} SE and posterior SD / SE within "
        f"{info['sd_ratio_range'][0]}-{info['sd_ratio_range'][1]}. All agree: {'yes' if info['all_agree'] else 'NO'}; "
        f"largest difference {info['max_abs_diff_se']:.3f} SE. Whole check {_minutes(info['seconds'])} "
        f"(compile {_minutes(info['compile_s'])}).",
        "",
    ]
    by_week = tab.groupby("week").agg(datasets=("dataset", "size"), max_abs_diff_se=("diff_in_se", lambda x: float(x.abs().max())),
                                      mean_diff_se=("diff_in_se", "mean"), mean_sd_ratio=("sd_ratio", "mean"),
                                      agree_share=("agrees", "mean")).reset_index()
    lines += [_table(by_week), "", "Default dataset:", "",
              _table(tab[tab["dataset"] == "default"][["week", "reml_estimate", "reml_se", "post_mean", "post_sd", "mcse", "diff_in_se", "sd_ratio"]]), ""]
    return lines


def loo_kfold_section(out: Path) -> list[str]:
    lines = ["## Integrated PSIS-LOO against grouped K-fold", ""]
    info = _load(out, "loo_kfold")
    if info is None:
        return lines + ["(not run yet)", ""]
    models = pd.read_csv(out / "loo_kfold_models.csv", keep_default_na=False).round(2)  # 'null' is a model name
    for col in ("psis_elpd", "kfold_elpd"):
        models[col] = models[col].map("{:.1f}".format)
    pairs = pd.read_csv(out / "loo_kfold_pairs.csv", keep_default_na=False).round(2)
    lines += [
        f"Participant level, on the integrated densities (post-baseline scores given the baseline, participant effects integrated out): "
        f"PSIS-LOO from one fit ({info['chains']} chains x {info['draws']} draws) against grouped {info['k']}-fold cross-validation "
        f"(every participant held out once). A pair agrees when the PSIS elpd difference lies within the SE of the K-fold one. "
        f"All agree: {'yes' if info['all_agree'] else 'NO'}; largest share of participants with Pareto k > 0.7: "
        f"{info['max_share_k_above_0.7']:.3f}. Whole check {_minutes(info['seconds'])}.",
        "",
        _table(pairs.drop(columns=["agrees"]).assign(agrees=pairs["agrees"].map({True: "yes", False: "NO"}))),
        "",
        _table(models.drop(columns=["seconds"])),
        "",
    ]
    return lines


def reference_section(out: Path) -> list[str]:
    from .reference import REFERENCE_DIR, TOLERANCE_MCSE

    lines = ["## Reference posteriors", ""]
    files = sorted(REFERENCE_DIR.glob("*.json"))
    if not files:
        return lines + ["(none generated yet)", ""]
    rows = []
    for f in files:
        ref = json.loads(f.read_text(encoding="utf-8"))
        st = ref["settings"]
        pars = ref["parameters"]
        rows.append({"file": f"reference/{f.name}", "parameters": len(pars), "chains x draws": f"{st['chains']} x {st['draws']}",
                     "divergences": ref["divergences"], "min ess_bulk": float(min(p["ess_bulk"] for p in pars.values())),
                     "max r_hat": float(max(p["r_hat"] for p in pars.values())), "fit time": _minutes(ref["seconds"])})
    lines += [
        "Posterior mean, SD and MCSE of every population-level parameter of each registered model on the default dataset "
        "(`python -m validation.run --reference`); the slow test `tests/test_validation_reference.py` refits with another seed "
        f"and requires each mean within {TOLERANCE_MCSE:g} combined MCSE of the reference.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]
    return lines


def _measured(info: dict) -> str:
    """When and under what load a check ran (date, machine, load average at its start and end), or 'not recorded'."""
    m = info.get("measured")
    if not m:
        return "not recorded"
    return f"{m['date'][:16].replace('T', ' ')} UTC, {m.get('cpus', '?')} CPUs, load {m['load_start'][0]:.1f} -> {m['load_end'][0]:.1f}"


def overview(out: Path) -> list[str]:
    """One line per check: size, headline figure, run time."""
    rows = []
    for path in sorted(out.glob("sbc_*.json")):
        s = json.loads(path.read_text(encoding="utf-8"))
        uni = pd.read_csv(out / f"sbc_{s['model']}_uniformity.csv")
        rows.append({"check": f"SBC {s['model']}", "size": f"{s['n_reps']} of {s.get('target_reps', s['n_reps'])} replicates",
                     "result": f"{len(s['flagged'])} of {len(uni)} parameters flagged (chi-square or extreme-rank p < 0.01; min p "
                               f"{min(uni['p_value'].min(), uni['p_extreme'].min()):.3f}; about {0.02 * len(uni):.1f} expected by chance)",
                     "time": _minutes(s["seconds"]), "measured": _measured(s)})
    info = _load(out, "coverage")
    if info:
        summ = pd.read_csv(out / "coverage_summary.csv")
        res = "; ".join(f"week {int(r.week)}: coverage {r.coverage:.3f}, bias {r.bias:+.2f}, RMSE {r.rmse:.2f}" for r in summ.itertuples())
        rows.append({"check": "coverage (90% intervals)", "size": f"{info['n_trials']} of {info.get('target_trials', info['n_trials'])} trials",
                     "result": res, "time": _minutes(info["seconds"]), "measured": _measured(info)})
    info = _load(out, "agreement")
    if info:
        rows.append({"check": "agreement with REML", "size": f"default + {info['n_datasets'] - 1} simulated",
                     "result": f"largest |difference| {info['max_abs_diff_se']:.3f} SE (tolerance {info['tolerance_se']}); all agree: "
                               f"{'yes' if info['all_agree'] else 'NO'}", "time": _minutes(info["seconds"]),
                     "measured": _measured(info)})
    info = _load(out, "loo_kfold")
    if info:
        pairs = pd.read_csv(out / "loo_kfold_pairs.csv", keep_default_na=False)
        rows.append({"check": f"integrated PSIS-LOO vs grouped {info['k']}-fold", "size": f"{len(pairs)} model pairs",
                     "result": f"largest |PSIS - K-fold| difference {pairs['gap_in_kfold_se'].abs().max():.2f} K-fold SE; all agree: "
                               f"{'yes' if info['all_agree'] else 'NO'}", "time": _minutes(info["seconds"]), "measured": _measured(info)})
    from .reference import REFERENCE_DIR

    refs = sorted(REFERENCE_DIR.glob("*.json"))
    if refs:
        loaded = [json.loads(f.read_text(encoding="utf-8")) for f in refs]
        total = sum(r["seconds"] for r in loaded)
        dates = sorted({_measured(r) for r in loaded})
        rows.append({"check": "reference posteriors", "size": f"{len(refs)} models", "result": "stored (see below)", "time": _minutes(total),
                     "measured": dates[0] if len(dates) == 1 else f"{len(dates)} runs: {'; '.join(dates)}"})
    if not rows:
        return []
    return ["## Overview", "", _table(pd.DataFrame(rows)), "", "Times are wall-clock and include compilation; 'measured' gives each check's date, machine and load average (1 min) at its start and end.", ""]


def build_report(out: Path) -> str:
    lines = [
        "# Statistical validation results",
        "",
        "Regenerate with `python -m validation.run --all` (see docs/validation.md).",
        "Figures below are read from `validation/results/`; each section states its replicate counts and run time.",
        "",
    ]
    lines += overview(out)
    lines += sbc_section(out)
    for section in ("coverage_section", "agreement_section", "loo_kfold_section", "reference_section"):
        fn = globals().get(section)
        if fn:
            lines += fn(out)
    return "\n".join(lines).rstrip() + "\n"
