"""Submission tables: the efficacy and sensitivity tables of a clinical study report, and the analysis results dataset
(ARD) every number of them comes from, computed from a fit's posterior draws.

For each fitted model with each arm's mean change from baseline by visit (diagnostics.contrasts.arm_means: the
trajectory models and the MMRM), written by diagnostics.outputs.write_outputs into <model>/:

    ard.csv                      the analysis results dataset: one row per statistic (ARD_COLUMNS, STATISTICS)
    efficacy_table.rtf, .docx    per arm N and baseline mean (SD); at each post-baseline visit n observed, the mean change
                                 from baseline with its 95% credible interval, each active arm - the control arm with its
                                 95% CrI, P(benefit) and P(benefit > MCID)
    sensitivity_table.rtf, .docx with the sensitivity analyses (--sensitivity, or saved ones that can be recomputed): each
                                 active arm - control at the primary visit (or at each week of --sensitivity-weeks) under
                                 MAR, J2R, CR, CIR (each with its conditional-mean and its information-anchored variance)
                                 and each delta, with 95% CrI and P(benefit), and the tipping points (additive delta,
                                 multiplicative factor)

A retrieved-dropout fit (`mmrm_retrieved`, models/mmrm_retrieved.py) has the treatment policy (ICH E9(R1)) as its primary
estimand: its efficacy table's primary rows are the treatment-policy arm means and differences (ARD analysis
'<model>: primary (treatment policy, retrieved dropouts)', the draws of its treatment-policy rows of estimates.csv), with
per visit the participants off treatment and those of them who attended; the model's own difference, had everyone stayed
on treatment, follows as supportive rows ('<model>: supportive (while on treatment, hypothetical)'). Its sensitivity table
opens with the treatment-policy row ('<model>: treatment_policy') and names MAR "while on treatment (hypothetical)".

The ARD is built first (`efficacy_ard`, `sensitivity_ard`) and the tables are laid out from it (`efficacy_layout`,
`sensitivity_layout`, rendered by diagnostics.table_formats), so a downstream tool can rebuild any table from ard.csv.
The credible intervals are equal-tailed (the 2.5% and 97.5% posterior quantiles, numpy's default linear interpolation),
not the 94% HDIs of estimates.csv; means, P(benefit) (= estimates.csv's p_below_0) and P(benefit > MCID)
(= p_below_-MCID) are the same quantities as there. Lower scores are better: benefit is a difference below 0.

The words of the titles and footnotes are the project's own: the estimand attributes of models.effects.estimand
(population, variable, intercurrent events, summary), the strategies of diagnostics.sensitivity.STRATEGY_TEXT and the
model's registered description.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models.effects import DEFAULT_MCID, TREATMENT_POLICY, estimand, flat_draws, phase
from models.mmrm import OFF_EFFECT
from models.mmrm_retrieved import off_status, posterior_policy

from . import table_formats as fmt
from .contrasts import arm_means, primary_week
from .sensitivity import (
    CONTRAST_COLUMN,
    DELTA_KIND_COLUMN,
    DELTA_KINDS,
    FLIP_INTERVAL_PROB,
    POLICY,
    REFERENCE_BASED,
    STRATEGIES,
    STRATEGY_TEXT,
    information_anchored,
)
from .summary import dataset_arms

CRI_PROB = 0.95
ARD_FILE = "ard.csv"
EFFICACY_FILE = "efficacy_table"  # .rtf and .docx
SENSITIVITY_FILE = "sensitivity_table"
FORMATS = ("rtf", "docx")
ARD_COLUMNS = ("table", "analysis", "model", "population", "arm_or_contrast", "visit", "statistic", "value")
KEY = ("analysis", "arm_or_contrast", "visit", "statistic")  # one row per key
STATISTICS = {
    "n": "participants of the arm in the analysis population (randomised, with a baseline score)",
    "baseline_mean": "mean of their observed baseline scores",
    "baseline_sd": "SD of their observed baseline scores (n - 1 denominator)",
    "n_observed": "participants of the arm in the analysis population with an observed score at the visit",
    "n_off_treatment": "treatment-policy analysis: participants of the arm off the randomised treatment at the visit (stopped early; "
                       "attended or not)",
    "n_retrieved": "treatment-policy analysis: of them, those who attended the visit (retrieved dropouts)",
    "mean": "posterior mean: of the arm's mean change from baseline (an arm), of the difference (a contrast)",
    "cri_lower": "lower end of the equal-tailed credible interval: the (1 - cri_level) / 2 posterior quantile",
    "cri_upper": "upper end: the (1 + cri_level) / 2 posterior quantile",
    "p_benefit": "P(difference < 0): the posterior probability that the active arm is better (lower scores are better)",
    "p_benefit_mcid": "P(difference < -mcid): the probability that the benefit exceeds the MCID",
    "cri_level": "the credible intervals' probability (0.95)",
    "mcid": "the minimal clinically important difference of p_benefit_mcid, outcome points (fit.py --mcid)",
    "n_draws": "posterior draws the summaries are computed from (chains x draws)",
    "delta": "a delta analysis: points added to the active arm's scores imputed after dropout",
    "anchoring_delta": "an information-anchored analysis: the delta (points) whose MAR + delta analysis has the reference-based "
                       "posterior mean; its draws are the MAR draws moved by it (diagnostics.sensitivity.information_anchored)",
    "tipping_delta": "the smallest delta at which benefit is no longer concluded (exact; empty when it never flips)",
    "tipping_factor": "the largest factor on the active arm's imputed change from baseline after dropout (1: MAR) at which "
                      "benefit is no longer concluded (exact; empty when it never flips)",
    "tipping_threshold": "the decision threshold of the tipping point: P(benefit) below it, benefit is not concluded",
    "tipping_interval": "the tipping point's interval: benefit is not concluded once this HDI of the difference reaches 0",
}
SHORT = {"MAR": "MAR (primary)", "J2R": "J2R: jump to reference", "CR": "CR: copy reference", "CIR": "CIR: copy increments in reference",
         POLICY: "Treatment policy, retrieved dropouts (primary)"}
# a retrieved-dropout fit (models/mmrm_retrieved.py): its primary estimand is the treatment policy; the model's own arm
# difference (MAR and the analyses built on it) is the supportive estimand while on treatment
POLICY_ESTIMAND = "treatment policy, retrieved dropouts"
ON_TREATMENT_ESTIMAND = "while on treatment, hypothetical"
ON_TREATMENT_MAR = "MAR, while on treatment (hypothetical)"
ANCHORED = "information anchored"  # the analysis name's and the table row's mark of the information-anchored variance


@dataclass
class SensitivityDraws:
    """What the sensitivity table needs: the strategies' draws per active arm, the deltas, the tipping points."""

    effects: dict  # (active arm, strategy) -> diagnostics.sensitivity.StrategyEffect (flat draws x the model's visits)
    deltas: tuple[float, ...]
    tipping: dict  # (active arm, week, kind) -> (exact tipping delta or factor, or nan; threshold, interval probability, week)
    ice_source: str = ""
    weeks: tuple[int, ...] | None = None  # the visits of the ARD's sensitivity rows (None: every post-baseline visit)


@dataclass
class SubmissionTables:
    """One model's submission tables: the ARD, the words of titles and footnotes, and why a table is missing."""

    name: str
    ard: pd.DataFrame  # ARD_COLUMNS; empty when the model has no efficacy table
    texts: dict = field(default_factory=dict)  # titles' and footnotes' words (no numbers: those are in the ARD)
    notes: dict[str, str] = field(default_factory=dict)  # 'efficacy' / 'sensitivity' -> why this model has none
    timings: dict = field(default_factory=dict)  # seconds: ard_s (here), render_s (diagnostics.outputs)
    _layouts: dict | None = field(default=None, repr=False, compare=False)

    def efficacy(self) -> fmt.TableLayout | None:
        return efficacy_layout(self.ard, self.texts) if "efficacy" not in self.notes and len(self.ard) else None

    def sensitivity(self) -> fmt.TableLayout | None:
        if "sensitivity" in self.notes or not len(self.ard) or not (self.ard["table"] == "sensitivity").any():
            return None
        return sensitivity_layout(self.ard, self.texts)

    def layouts(self) -> dict[str, fmt.TableLayout]:
        """{file stem: layout} of the tables this model has (laid out once)."""
        if self._layouts is None:
            out = {EFFICACY_FILE: self.efficacy(), SENSITIVITY_FILE: self.sensitivity()}
            self._layouts = {k: v for k, v in out.items() if v is not None}
        return self._layouts

    def files(self) -> dict[str, bytes]:
        """{file name: bytes} of <model>/: ard.csv and each table as RTF and DOCX ({} without an efficacy table)."""
        if not len(self.ard):
            return {}
        out = {ARD_FILE: self.ard.to_csv(index=False).encode()}
        for stem, layout in self.layouts().items():
            out[f"{stem}.rtf"] = fmt.rtf(layout)
            out[f"{stem}.docx"] = fmt.docx(layout)
        return out


# ---------------------------------------------------------------- the ARD


def _quantiles(draws: np.ndarray, prob: float = CRI_PROB) -> tuple[np.ndarray, np.ndarray]:
    """The equal-tailed interval over the first axis (flat draws)."""
    lo, hi = np.quantile(draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    return lo, hi


def _rows(table: str, analysis: str, model: str, population: str):
    """A row adder for one analysis: add(arm_or_contrast, visit, statistic, value)."""
    rows = []

    def add(who: str, visit, statistic: str, value) -> None:
        rows.append({"table": table, "analysis": analysis, "model": model, "population": population, "arm_or_contrast": who,
                     "visit": pd.NA if visit is None else int(visit), "statistic": statistic, "value": float(value)})

    return rows, add


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(ARD_COLUMNS))
    frame["visit"] = frame["visit"].astype("Int64")
    frame["value"] = frame["value"].astype(float)
    return frame


def efficacy_analysis(name: str, policy: bool = False) -> str:
    """The ARD's analysis name of the efficacy table's primary analysis: '<model>: primary (MAR)'; of a retrieved-dropout
    fit (policy), '<model>: primary (treatment policy, retrieved dropouts)'."""
    return f"{name}: primary ({POLICY_ESTIMAND if policy else 'MAR'})"


def supportive_analysis(name: str) -> str:
    """The ARD's analysis name of a retrieved-dropout fit's supportive efficacy analysis: the model's arm difference had
    every participant stayed on the randomised treatment."""
    return f"{name}: supportive ({ON_TREATMENT_ESTIMAND})"


def primary_analysis(ard: pd.DataFrame, name: str) -> str:
    """The efficacy table's primary analysis in an ARD (the treatment-policy one when the ARD has it)."""
    policy = efficacy_analysis(name, policy=True)
    return policy if (ard["analysis"] == policy).any() else efficacy_analysis(name)


def sensitivity_analysis(name: str, strategy: str, delta: float = 0.0, variance: str = "conditional_mean") -> str:
    """The ARD's analysis name: '<model>: J2R', '<model>: J2R (information anchored)', '<model>: MAR + delta 2'."""
    if delta:
        return f"{name}: {strategy} + delta {delta:g}"
    return f"{name}: {strategy} ({ANCHORED})" if variance == "information_anchored" else f"{name}: {strategy}"


TIPPING_STATISTIC = {"additive": "tipping_delta", "multiplicative": "tipping_factor"}  # the ARD's statistic per kind


def tipping_analysis(name: str, kind: str = "additive") -> str:
    """The ARD's analysis name of a tipping point: '<model>: tipping point (MAR + delta)', '... (MAR x factor)'."""
    return f"{name}: tipping point (MAR + delta)" if kind == "additive" else f"{name}: tipping point (MAR x factor)"


def efficacy_ard(name: str, posterior, dataset, meta, mcid: float = DEFAULT_MCID, population: str = "",
                 means=None) -> pd.DataFrame | None:
    """The efficacy table's statistics (None for a model without per-arm means): per arm n, baseline mean and SD; at each
    post-baseline visit per arm n observed, mean change and its CrI; per active arm - control the mean difference, CrI,
    P(benefit) and P(benefit > MCID); and the analysis' cri_level, mcid and n_draws. `means`: arm_means(posterior, meta)
    when the caller has it.

    A retrieved-dropout fit (its posterior has the off-treatment shift, models/mmrm_retrieved.py) has two analyses: the
    primary one is the treatment policy (`efficacy_analysis(name, policy=True)`): per draw each arm's mean change over all
    its randomised participants, the on-treatment mean plus pi_a theta_a (pi_a the share of the arm off treatment at the
    visit, theta_a its off-treatment shift), and per active arm the difference d + pi_a theta_a - pi_c theta_c, the draws of
    its treatment-policy rows of estimates.csv (`posterior_policy`), with per arm and visit n_off_treatment and n_retrieved;
    the supportive one (`supportive_analysis`) is the model's on-treatment arm means and difference d (hypothetical
    strategy), the statistics of the MAR analysis without the counts."""
    means = arm_means(posterior, meta) if means is None else means
    if means is None:
        return None
    arms = [str(a) for a in means["arm"].values]
    weeks = [int(w) for w in means["week"].values]
    m = flat_draws(means)  # draws x arm x week
    effect = posterior["nac_effect"]
    if "active_arm" not in effect.dims:
        effect = effect.expand_dims(active_arm=arms[1:])
    d = flat_draws(effect.sel(active_arm=arms[1:], week=weeks).transpose("chain", "draw", "active_arm", "week"))
    scores = np.asarray(dataset["score"].values, dtype=float)
    week_col = {int(w): j for j, w in enumerate(dataset["week"].values)}
    arm_index = dataset_arms(dataset)
    in_population = ~np.isnan(scores[:, 0])
    members = {arm: in_population & (arm_index == a) for a, arm in enumerate(arms)}
    policy = _policy(posterior, dataset, arms, weeks) if OFF_EFFECT in posterior else None

    def head(add) -> None:
        add("", None, "cri_level", CRI_PROB)
        add("", None, "mcid", mcid)
        add("", None, "n_draws", m.shape[0])
        for arm in arms:
            base = scores[members[arm], 0]
            add(arm, None, "n", len(base))
            add(arm, None, "baseline_mean", base.mean() if len(base) else np.nan)
            add(arm, None, "baseline_sd", base.std(ddof=1) if len(base) > 1 else np.nan)

    def visits(add, m, d, counts=None) -> None:
        m_lo, m_hi = _quantiles(m)
        d_lo, d_hi = _quantiles(d)
        for j, w in enumerate(weeks):
            for a, arm in enumerate(arms):
                if counts is not None:
                    add(arm, w, "n_observed", int((~np.isnan(scores[members[arm], week_col[w]])).sum()))
                    for statistic, n in counts.items():
                        add(arm, w, statistic, n[a, j])
                add(arm, w, "mean", m[:, a, j].mean())
                add(arm, w, "cri_lower", m_lo[a, j])
                add(arm, w, "cri_upper", m_hi[a, j])
            for k, arm in enumerate(arms[1:]):
                x = d[:, k, j]
                who = f"{arm} - {arms[0]}"
                add(who, w, "mean", x.mean())
                add(who, w, "cri_lower", d_lo[k, j])
                add(who, w, "cri_upper", d_hi[k, j])
                add(who, w, "p_benefit", (x < 0).mean())
                add(who, w, "p_benefit_mcid", (x < -mcid).mean())

    rows, add = _rows("efficacy", efficacy_analysis(name, policy is not None), name, population)
    head(add)
    if policy is None:
        visits(add, m, d, {})
        return _frame(rows)
    shift, tp, counts = policy
    visits(add, m + shift, tp, counts)
    supportive, add = _rows("efficacy", supportive_analysis(name), name, population)
    visits(add, m, d)
    return _frame(rows + supportive)


def _policy(posterior, dataset, arms: list[str], weeks: list[int]):
    """A retrieved-dropout fit's treatment policy at `weeks` (models/mmrm_retrieved.py): (per draw and arm the shift of the
    arm's mean change, pi_a theta_a: draws x arm x week; the treatment-policy difference of each active arm: draws x active
    arm x week, `posterior_policy`'s draws; {n_off_treatment, n_retrieved: arm x week})."""
    from models import build_design

    design = build_design(dataset)
    if [str(a) for a in design.arms] != arms:
        raise ValueError(f"the fit's arms {arms} are not the dataset's {list(design.arms)}")
    tp, shares = posterior_policy(posterior, design)  # flat draws x active arm x post-baseline visit
    visit = {int(w): v for v, w in enumerate(design.weeks[1:])}
    cols = [visit[w] for w in weeks]
    theta = flat_draws(posterior[OFF_EFFECT].transpose("chain", "draw", "arm", "visit"))[:, :, cols]
    shift = theta * shares.off[None][:, :, cols]
    off = off_status(design)[:, cols]
    seen = ~np.isnan(design.wide_scores()[:, 1:][:, cols])
    by_arm = np.asarray(design.arm_idx)
    counts = {"n_off_treatment": np.stack([off[by_arm == a].sum(axis=0) for a in range(len(arms))]),
              "n_retrieved": np.stack([(off & seen)[by_arm == a].sum(axis=0) for a in range(len(arms))])}
    return shift, tp[:, :, cols], counts


def sensitivity_ard(name: str, draws: SensitivityDraws, control: str, mcid: float = DEFAULT_MCID, population: str = "") -> pd.DataFrame:
    """The sensitivity table's statistics: per active arm - control at every post-baseline visit (or at `draws.weeks`),
    under each strategy (MAR, J2R, CR, CIR; each reference-based one also with its information-anchored variance, with
    its anchoring_delta; a retrieved-dropout fit's treatment policy first, analysis '<model>: treatment_policy', the rows
    of its sensitivity.csv) and MAR + each delta, the mean difference, CrI, P(benefit) and P(benefit > MCID); each delta
    analysis' delta; per active arm and reported week the tipping points: additive (tipping_delta) and multiplicative
    (tipping_factor), each with tipping_threshold and tipping_interval."""
    frames = []
    arms = list(dict.fromkeys(arm for arm, _ in draws.effects))
    plan = [(s, v, 0.0) for s in STRATEGIES for v in ("conditional_mean", "information_anchored")
            if v == "conditional_mean" or s in REFERENCE_BASED]
    plan += [("MAR", "conditional_mean", float(x)) for x in draws.deltas]
    if all((arm, POLICY) in draws.effects for arm in arms):  # a retrieved-dropout fit: its primary estimand first
        plan.insert(0, (POLICY, "conditional_mean", 0.0))
    for strategy, variance, delta in plan:
        rows, add = _rows("sensitivity", sensitivity_analysis(name, strategy, delta, variance), name, population)
        if delta:
            add("", None, "delta", delta)
        for arm in arms:
            eff = draws.effects[(arm, strategy)]
            if variance == "information_anchored":
                eff = information_anchored(eff, draws.effects[(arm, "MAR")])
            x = eff.delta_adjusted(delta) if delta else eff.draws  # flat draws x the model's visits
            weeks = np.asarray(eff.weeks)
            keep = (weeks > 0) & (np.isin(weeks, draws.weeks) if draws.weeks is not None else True)
            x, weeks = x[:, keep], weeks[keep]
            anchoring = eff.anchoring_delta[keep] if eff.anchoring_delta is not None else None
            lo, hi = _quantiles(x)
            who = f"{arm} - {control}"
            for j, w in enumerate(weeks):
                add(who, w, "mean", x[:, j].mean())
                add(who, w, "cri_lower", lo[j])
                add(who, w, "cri_upper", hi[j])
                add(who, w, "p_benefit", (x[:, j] < 0).mean())
                add(who, w, "p_benefit_mcid", (x[:, j] < -mcid).mean())
                if anchoring is not None:
                    add(who, w, "anchoring_delta", anchoring[j])
        frames.append(_frame(rows))
    for kind in DELTA_KINDS:
        rows, add = _rows("sensitivity", tipping_analysis(name, kind), name, population)
        for (arm, _, of), (exact, threshold, interval, week) in draws.tipping.items():
            if of == kind:
                who = f"{arm} - {control}"
                add(who, week, TIPPING_STATISTIC[kind], np.nan if exact is None else exact)
                add(who, week, "tipping_threshold", threshold)
                add(who, week, "tipping_interval", interval)
        if rows or kind == "additive":
            frames.append(_frame(rows))
    return pd.concat(frames, ignore_index=True)


def fresh_sensitivity_draws(sens) -> SensitivityDraws | None:
    """The draws a ModelSensitivity computed (diagnostics.sensitivity_analyses.model_sensitivity), None for a saved one."""
    if sens is None or not sens.effects:
        return None
    tipping = {(tp.arm, int(tp.week), tp.kind): (tp.exact, tp.threshold, FLIP_INTERVAL_PROB, int(tp.week)) for tp in sens.tipping_points}
    return SensitivityDraws(dict(sens.effects), tuple(sens.deltas), tipping, sens.ice_source, sens.row_weeks)


# ---------------------------------------------------------------- the words


def _texts(name: str, meta, model: str, description: str, change_scores: bool, weeks, data_source: str,
           policy: bool = False) -> dict:
    """The words of the titles and footnotes, from the project's estimand attributes (models.effects.estimand); `policy`:
    a retrieved-dropout fit, whose primary estimand is the treatment policy (its on-treatment one: `supportive_events`)."""
    kind = "difference_treatment_policy" if policy else "difference_change" if change_scores else "difference"
    several = len(meta.treatment_arms) > 1
    week = primary_week(meta, weeks)
    stated = estimand(meta, week, kind, arm="each active arm" if several else None)
    handling: dict[str, list[int]] = {}
    for w in weeks:
        handling.setdefault(estimand(meta, w, kind, arm=meta.treatment_arms[0])["intercurrent_events"], []).append(int(w))  # any arm
    extra = {}
    if policy:
        supportive: dict[str, list[int]] = {}
        for w in weeks:
            supportive.setdefault(estimand(meta, w, "difference_change", model=model, arm=meta.treatment_arms[0])["intercurrent_events"],
                                  []).append(int(w))
        extra = {"primary_analysis": efficacy_analysis(name, policy=True), "supportive_analysis": supportive_analysis(name),
                 "supportive_events": [[ws, text] for text, ws in supportive.items()]}
    return {
        **extra,
        "model": name, "registered_model": model, "description": description, "outcome": meta.outcome_label,
        "arms": list(meta.arms), "control": meta.control_arm, "primary_week": int(week),
        "phases": {int(w): phase(w, meta) for w in weeks},
        "population": stated["population"], "summary": stated["summary"],
        "variable": {a: estimand(meta, week, kind, arm=a)["variable"] for a in meta.treatment_arms},
        "intercurrent_events": [[ws, text] for text, ws in handling.items()],
        "data_source": data_source,
    }


def _weeks_text(weeks) -> str:
    weeks = [int(w) for w in weeks]
    return f"week {weeks[0]}" if len(weeks) == 1 else "weeks " + ", ".join(str(w) for w in weeks[:-1]) + f" and {weeks[-1]}"


def _visit_label(week: int, texts: dict) -> str:
    where = texts["phases"].get(int(week), texts["phases"].get(str(week), ""))
    extra = {"end of treatment": " (end of treatment)", "off-treatment follow-up": " (follow-up)"}.get(where, "")
    return f"Week {int(week)}{extra}"


# ---------------------------------------------------------------- layouts (from the ARD only)


class _Lookup:
    """ARD values by (arm_or_contrast, visit, statistic) within one analysis."""

    def __init__(self, ard: pd.DataFrame, analysis: str):
        rows = ard[ard["analysis"] == analysis]
        visits = [None if pd.isna(v) else int(v) for v in rows["visit"]]
        self.values = dict(zip(zip(rows["arm_or_contrast"].astype(str), visits, rows["statistic"].astype(str)), rows["value"].astype(float)))

    def __call__(self, who: str, visit, statistic: str) -> float:
        return self.values.get((who, None if visit is None else int(visit), statistic), float("nan"))

    def visits(self, statistic: str = "mean") -> list[int]:
        return sorted({v for (_, v, s) in self.values if v is not None and s == statistic})


def _percent(level: float) -> str:
    return f"{100 * level:g}%"


def efficacy_layout(ard: pd.DataFrame, texts: dict) -> fmt.TableLayout:
    """The efficacy table from the ARD: arms as columns (N in the header), per visit n observed, mean change (CrI),
    difference vs control (CrI), P(benefit), P(benefit > MCID). A retrieved-dropout fit's table (its ARD has the
    treatment-policy analysis) shows the treatment policy as the primary rows, with per visit the participants off
    treatment (attended), and its on-treatment difference and P(benefit) as supportive rows (hypothetical strategy)."""
    name, arms, control = texts["model"], texts["arms"], texts["control"]
    analysis = primary_analysis(ard, name)
    policy = analysis == efficacy_analysis(name, policy=True)
    get = _Lookup(ard, analysis)
    level, mcid, draws = get("", None, "cri_level"), get("", None, "mcid"), get("", None, "n_draws")
    cri = f"{_percent(level)} CrI"
    header = ((("Visit", 1), ("Statistic", 1), *[(f"{a} (N = {fmt.count(get(a, None, 'n'))})", 1) for a in arms]),)
    body = [("Baseline", "Mean (SD)", *[fmt.mean_sd(get(a, None, "baseline_mean"), get(a, None, "baseline_sd")) for a in arms])]
    groups = [0]
    blank = ("",)
    by = "Primary, treatment policy: " if policy else ""
    on = _Lookup(ard, supportive_analysis(name)) if policy else None
    hypothetical = "Supportive, while on treatment / hypothetical: "
    for w in get.visits():
        groups.append(len(body))
        diff = [f"{a} - {control}" for a in arms[1:]]
        body.append((_visit_label(w, texts), "n observed", *[fmt.count(get(a, w, "n_observed")) for a in arms]))
        if policy:
            body.append(("", "n off treatment (attended)",
                         *[f"{fmt.count(get(a, w, 'n_off_treatment'))} ({fmt.count(get(a, w, 'n_retrieved'))})" for a in arms]))
        body += [
            ("", f"{by}{'m' if by else 'M'}ean change from baseline ({cri})",
             *[fmt.mean_cri(get(a, w, "mean"), get(a, w, "cri_lower"), get(a, w, "cri_upper")) for a in arms]),
            ("", f"{by}{'d' if by else 'D'}ifference vs {control} ({cri})", *blank, *[fmt.mean_cri(get(c, w, "mean"), get(c, w, "cri_lower"), get(c, w, "cri_upper")) for c in diff]),
            ("", "P(benefit)", *blank, *[fmt.probability(get(c, w, "p_benefit")) for c in diff]),
            ("", "P(benefit > MCID)", *blank, *[fmt.probability(get(c, w, "p_benefit_mcid")) for c in diff]),
        ]
        if policy:
            body += [
                ("", f"{hypothetical}difference vs {control} ({cri})", *blank,
                 *[fmt.mean_cri(on(c, w, "mean"), on(c, w, "cri_lower"), on(c, w, "cri_upper")) for c in diff]),
                ("", f"{hypothetical}P(benefit)", *blank, *[fmt.probability(on(c, w, "p_benefit")) for c in diff]),
            ]
    tails = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    label = texts["outcome"]
    if policy:
        counted = (f"n observed: those with a {label} score at the visit. n off treatment (attended): those who had stopped the "
                   "randomised treatment early by the visit (in brackets, those of them who attended it: retrieved dropouts).")
        mean = ("Mean change from baseline, treatment policy: the posterior mean of the arm's mean change from baseline over all its "
                "randomised participants, on or off treatment (the model's on-treatment mean plus the share of the arm off "
                "treatment at the visit times the arm's off-treatment shift).")
        events = [*[f"Primary estimand, treatment policy (ICH E9(R1)), {_weeks_text(ws)}: {text}." for ws, text in texts["intercurrent_events"]],
                  *[f"Supportive estimand, while on treatment / hypothetical: the difference had every participant stayed on the randomised "
                    f"treatment, {_weeks_text(ws)}: {text}." for ws, text in texts.get("supportive_events", [])]]
    else:
        counted = f"n observed: those with a {label} score at the visit."
        mean = "Mean change from baseline: the posterior mean of the arm's mean change from baseline under the model."
        events = [f"Intercurrent events and missing data, {_weeks_text(ws)}: {text}." for ws, text in texts["intercurrent_events"]]
    footnotes = [
        f"N: {texts['population']}, by randomised arm. Baseline: mean (SD) of their observed baseline {label} scores. {counted}",
        f"{mean} {cri}: {_percent(level)} equal-tailed credible interval (the {tails[0]:g}% and {tails[1]:g}% posterior quantiles).",
        f"Difference: each active arm minus {control}; lower {label} scores are better. P(benefit): the posterior probability "
        f"that the difference is below 0. P(benefit > MCID): the posterior probability that it is below -{fmt.setting(mcid)} points, "
        f"the minimal clinically important difference (MCID = {fmt.setting(mcid)} points).",
        *events,
        f"Model: {name} ({texts['description']}); posterior summaries from {fmt.count(draws)} posterior draws.",
    ]
    estimand_line = (f"Primary estimand: treatment policy (ICH E9(R1)), retrieved dropouts: {texts['summary']}" if policy
                     else f"Estimand: {texts['summary']}")
    return fmt.TableLayout(
        title=(f"Change from baseline in {label} score by visit", f"Population: {texts['population']}",
               f"Model: {name}", estimand_line),
        header=header, body=tuple(body), widths=(2.0, 3.6 if policy else 2.9, *[2.0] * len(arms)), footnotes=tuple(footnotes),
        source=_source(name, texts), group_rows=tuple(groups), left=2, landscape=len(arms) > 2,  # a column per arm
    )


def _source(name: str, texts: dict) -> str:
    data = f"; data: {texts['data_source']}" if texts.get("data_source") else ""
    return f"Source: {name}/idata.nc (posterior draws), {name}/{ARD_FILE} (analysis results dataset){data}."


def reported_weeks(ard: pd.DataFrame, name: str) -> list[int]:
    """The weeks the sensitivity table shows: those of the tipping point's rows (the weeks the sensitivity analyses
    report: the end of treatment, or fit.py / diagnose.py --sensitivity-weeks), in order; [] when it has none."""
    rows = ard[(ard["analysis"] == tipping_analysis(name)) & ard["visit"].notna()]
    return sorted({int(v) for v in rows["visit"]})


def _analysis_label(strategy: str, delta: float) -> str:
    """A row's label from its analysis name (without the model): 'J2R: jump to reference', 'J2R, information anchored'."""
    if np.isfinite(delta):
        return f"MAR + delta {fmt.setting(delta)} points"
    if strategy.endswith(f" ({ANCHORED})"):
        return f"{strategy.removesuffix(f' ({ANCHORED})')}, {ANCHORED}"
    return SHORT.get(strategy, strategy)


def sensitivity_layout(ard: pd.DataFrame, texts: dict, week: int | None = None) -> fmt.TableLayout:
    """The sensitivity table from the ARD at `week` (default: `reported_weeks`, else the primary visit): one row per
    analysis (MAR, J2R, CR, CIR each followed by its information-anchored row, MAR + each delta) and the tipping point;
    per active arm - control the difference (CrI) and P(benefit). With several weeks, a first column names the visit and
    each visit's rows form a group."""
    name, arms, control = texts["model"], texts["arms"], texts["control"]
    weeks = [int(week)] if week is not None else (reported_weeks(ard, name) or [int(texts["primary_week"])])
    several = len(weeks) > 1
    primary = _Lookup(ard, primary_analysis(ard, name))
    level, draws = primary("", None, "cri_level"), primary("", None, "n_draws")
    cri = f"{_percent(level)} CrI"
    contrasts = [f"{a} - {control}" for a in arms[1:]]
    rows = ard[ard["table"] == "sensitivity"]
    tippings = {kind: tipping_analysis(name, kind) for kind in DELTA_KINDS}
    analyses = [a for a in dict.fromkeys(rows["analysis"]) if a not in tippings.values()]
    policy = sensitivity_analysis(name, POLICY) in analyses  # a retrieved-dropout fit: MAR is its on-treatment estimand
    lookups = {a: _Lookup(ard, a) for a in [*analyses, *tippings.values()]}
    tip = lookups[tipping_analysis(name)]
    factors = lookups[tippings["multiplicative"]]
    body, groups, tipping, threshold, interval, by_factor = [], [], [], np.nan, np.nan, []
    for w in weeks:
        groups.append(len(body))
        visit = [_visit_label(w, texts)] if several else []
        for analysis in analyses:
            get = lookups[analysis]
            cells = []
            for c in contrasts:
                cells += [fmt.mean_cri(get(c, w, "mean"), get(c, w, "cri_lower"), get(c, w, "cri_upper")),
                          fmt.probability(get(c, w, "p_benefit"))]
            shown = _analysis_label(analysis.removeprefix(f"{name}: "), get("", None, "delta"))
            body.append((*visit, ON_TREATMENT_MAR if policy and shown == SHORT["MAR"] else shown, *cells))
            visit = [""] * several
        at = [tip(c, w, "tipping_delta") for c in contrasts]
        found = next((tip(c, w, "tipping_threshold") for c in contrasts if np.isfinite(tip(c, w, "tipping_threshold"))), np.nan)
        if np.isfinite(found):  # the tipping point was computed at this week
            threshold = found
            interval = next((tip(c, w, "tipping_interval") for c in contrasts if np.isfinite(tip(c, w, "tipping_interval"))), np.nan)
            tipping += at
            body.append((*visit, "Tipping point: delta (points)", *[x for t in at for x in (fmt.points(t), "")]))
            visit = [""] * several
        if any(np.isfinite(factors(c, w, "tipping_threshold")) for c in contrasts):  # the multiplicative one at this week
            at = [factors(c, w, "tipping_factor") for c in contrasts]
            by_factor += at
            body.append((*visit, "Tipping point: factor on the change", *[x for t in at for x in (fmt.points(t, 2), "")]))
    label = texts["outcome"]
    footnotes = [f"Treatment policy, retrieved dropouts (primary): {TREATMENT_POLICY}. The other rows, the tipping points "
                 "included, are analyses of the model's difference while on treatment (hypothetical strategy: as if every "
                 "participant had stayed on the randomised treatment), the missing scores after dropout following the row's "
                 "assumption."] if policy else []
    footnotes += [*[f"{s}: {STRATEGY_TEXT[s].format(control=control)}." for s in STRATEGIES],
                 f"{', '.join(REFERENCE_BASED)}: the posterior of the conditional-mean estimator, whose variance is its repeated-sampling "
                 f"variance (smaller the more is imputed). {ANCHORED.capitalize()}: the same mean with the variance of the MAR "
                 "analysis (the MAR posterior moved by the delta that gives the row above's mean), which keeps the information of "
                 "the MAR analysis, as regulators usually ask.",
                 "MAR + delta: as MAR, with the active arm's scores imputed after dropout made delta points worse (higher)."]
    if np.isfinite(threshold):
        footnotes.append(f"Tipping point: the smallest delta at which benefit is no longer concluded, that is P(benefit) below "
                         f"{fmt.setting(threshold)} or the {_percent(interval)} highest-density interval of the difference reaching 0 "
                         f"(MAR + delta, exact).")
        if any(not np.isfinite(t) for t in tipping):
            footnotes.append(f"{fmt.MISSING}: the conclusion does not flip at any delta (no scores imputed after dropout in that arm "
                             "at this visit).")
        if any(np.isfinite(t) and t == 0 for t in tipping):
            footnotes.append(f"{fmt.points(0)}: benefit is not concluded even without delta.")
    if by_factor:
        footnotes.append("Tipping point: factor on the change: the largest factor f at which benefit is no longer concluded (the "
                         "same threshold and interval, exact) when the active arm's imputed change from baseline after dropout is "
                         "multiplied by f (1: MAR; 0: no change from baseline; below 0: worsening). A factor on the change, not "
                         "on the score, because a rating scale has no natural zero.")
        if any(not np.isfinite(t) for t in by_factor):
            footnotes.append(f"{fmt.MISSING} (factor): the conclusion does not flip at any factor below 1 (no improvement "
                             "imputed after dropout in that arm at this visit).")
        if any(np.isfinite(t) and t == 1 for t in by_factor):
            footnotes.append(f"{fmt.points(1, 2)}: benefit is not concluded even at factor 1 (MAR).")
    if texts.get("ice_source"):
        footnotes.append(f"Participants listed in {texts['ice_source']} follow the strategy listed there from the week listed, "
                         "in every row; the others follow the row's strategy after their last observed visit.")
    footnotes += [
        f"Difference: each active arm minus {control}; lower {label} scores are better. {cri}: {_percent(level)} equal-tailed "
        "credible interval (posterior quantiles). P(benefit): the posterior probability that the difference is below 0.",
        f"Population: {texts['population']}. Model: {name} ({texts['description']}); each row is computed from the same "
        f"{fmt.count(draws)} posterior draws (no refit).",
    ]
    variable = "; ".join(dict.fromkeys(texts["variable"].values())) if len(arms) > 2 else next(iter(texts["variable"].values()))
    if weeks == [int(texts["primary_week"])]:
        stated = f"Variable: {variable}"
    else:  # the variable of the primary visit, at these weeks: "MADRS change from baseline at weeks 12 and 16"
        stated = f"Variable: {variable.split(' at week ')[0] if variable.count(' at week ') == 1 else label} at {_weeks_text(weeks)}"
    columns = [x for _ in contrasts for x in ((f"Difference ({cri})", 1), ("P(benefit)", 1))]
    return fmt.TableLayout(
        title=(f"Sensitivity of the difference vs {control} to the handling of missing {label} scores after dropout",
               stated, f"Population: {texts['population']}", f"Model: {name}"),
        header=((("", 1 + several), *[(c, 2) for c in contrasts]),
                (*[("Visit", 1)] * several, ("Analysis (missing scores after dropout)", 1), *columns)),
        body=tuple(body), widths=(*[2.0] * several, 3.2, *[w for _ in contrasts for w in (2.2, 1.1)]), footnotes=tuple(footnotes),
        source=_source(name, texts), landscape=len(contrasts) > 2 or (several and len(contrasts) > 1),
        group_rows=tuple(groups) if several else (), left=1 + several,
    )


# ---------------------------------------------------------------- one model


def submission_tables(name: str, idata, dataset, mcid: float = DEFAULT_MCID, model: str | None = None, sensitivity=None,
                      draws: SensitivityDraws | None = None, data_source: str = "") -> SubmissionTables:
    """One fitted model's submission tables (its ARD; the layouts follow from it).

    idata        the fit (only its posterior is read)
    dataset      the validated dataset it was fitted to (inference.storage.saved_dataset, or design.dataset)
    mcid         the run's MCID (fit.py --mcid)
    model        the registered model name (default: the fit's provenance, else `name`)
    sensitivity  the model's ModelSensitivity (diagnostics.sensitivity_analyses), or None when not run
    draws        the sensitivity draws when `sensitivity` does not carry them (a saved one, recomputed)"""
    from data.schema import meta_of
    from models import REGISTRY

    t0 = time.perf_counter()
    post = idata.posterior if hasattr(idata, "posterior") else idata
    model = model or str(post.attrs.get("model", "") or name).strip('"')
    spec = REGISTRY.get(model)
    meta = meta_of(dataset)
    result = SubmissionTables(name, _frame([]))
    means_weeks = arm_means(post, meta)
    if means_weeks is None:
        result.notes["efficacy"] = (f"{name} has no mean {meta.outcome_label} change from baseline per arm and visit (its posterior has "
                                    "no 'placebo_change' and 'nac_effect' by week), so no efficacy or sensitivity table")
        result.timings["ard_s"] = time.perf_counter() - t0
        return result
    weeks = [int(w) for w in means_weeks["week"].values]
    texts = _texts(name, meta, model, spec.description if spec else "", bool(spec and spec.scores_change), weeks, data_source,
                   policy=OFF_EFFECT in post)
    frames = [efficacy_ard(name, post, dataset, meta, mcid, texts["population"], means=means_weeks)]
    draws = draws if draws is not None else fresh_sensitivity_draws(sensitivity)
    if draws is not None:
        frames.append(sensitivity_ard(name, draws, meta.control_arm, mcid, texts["population"]))
        texts["ice_source"] = draws.ice_source
    elif sensitivity is None:
        result.notes["sensitivity"] = "the sensitivity analyses were not run (fit.py or diagnose.py with --sensitivity)"
    elif "sensitivity" in sensitivity.notes:
        result.notes["sensitivity"] = sensitivity.notes["sensitivity"]
    else:
        result.notes["sensitivity"] = "the saved sensitivity tables could not be recomputed from the fit"
    result.ard = pd.concat(frames, ignore_index=True)
    result.texts = texts
    result.timings["ard_s"] = time.perf_counter() - t0
    return result


def check_ard(ard: pd.DataFrame) -> None:
    """ValueError when a statistic appears twice (the ARD has one row per KEY) or is not a documented one."""
    dup = ard.duplicated(list(KEY), keep=False)
    if dup.any():
        raise ValueError(f"the ARD has {int(dup.sum())} rows with the same analysis, arm_or_contrast, visit and statistic, e.g. "
                         f"{ard.loc[dup, list(KEY)].iloc[0].to_dict()}")
    unknown = sorted(set(ard["statistic"]) - set(STATISTICS))
    if unknown:
        raise ValueError(f"the ARD has undocumented statistics {unknown}")


# ---------------------------------------------------------------- saved results folders


def _saved_draws(folder: Path, name: str, idata, dataset, sens, model: str) -> tuple[SensitivityDraws | None, str]:
    """The draws behind a saved sensitivity.csv, recomputed from the fit with the deltas it lists and the intercurrent
    events run.json records (the dataset folder's ice.csv), accepted only when every recomputed mean equals the saved one;
    else (None, why)."""
    from data import DatasetError
    from data.ice import load_ice
    from models import build_design

    from .sensitivity import arm_strategy_effects, model_pieces

    saved = sens.tables.get("sensitivity")
    if saved is None or not len(saved):
        return None, sens.notes.get("sensitivity", "the results folder holds no sensitivity.csv for this model")
    record = {}
    run_json = folder / "run.json"
    if run_json.is_file():
        try:
            record = json.loads(run_json.read_text()).get("sensitivity") or {}
        except (json.JSONDecodeError, OSError):
            record = {}
    source = str(dataset.attrs.get("source") or "")
    folder_ice = None
    if source and Path(source).is_dir():
        try:
            folder_ice = load_ice(source, dataset)
        except DatasetError:
            folder_ice = None
    if "ice" in record:
        candidates = [folder_ice] if record["ice"] else [None]
    else:
        candidates = [None] + ([folder_ice] if folder_ice is not None else [])
    deltas = tuple(float(x) for x in dict.fromkeys(saved.loc[saved["delta"] > 0, "delta"])) if "delta" in saved else ()
    design = build_design(dataset)
    pieces = model_pieces(idata, design, model)
    for ice in candidates:
        if ice is None and record.get("ice"):
            continue
        effects = arm_strategy_effects(pieces, design, ice=ice)
        if _same_means(saved, effects, pieces):
            weeks = tuple(int(w) for w in dict.fromkeys(saved["week"])) if "week" in saved else None
            return SensitivityDraws(effects, deltas, _saved_tipping(sens, pieces), ice.source if ice is not None and len(ice) else "",
                                    weeks), ""
    return None, (f"the saved {name}/sensitivity.csv was made with options this folder does not record (e.g. another --ice), "
                  "so its draws cannot be recomputed: run diagnose.py RESULTS --sensitivity (with the same --ice, --deltas) to "
                  "recompute it and its table")


def _same_means(saved: pd.DataFrame, effects: dict, pieces) -> bool:
    """Whether every row of a saved sensitivity.csv (diagnostics.sensitivity.sensitivity_table) has the mean of the
    recomputed draws: the same strategies, deltas and intercurrent events (an information-anchored row's mean is its
    strategy's)."""
    try:
        for r in saved.to_dict("records"):
            arm = str(r[CONTRAST_COLUMN]).removesuffix(f" - {pieces.control}") if CONTRAST_COLUMN in r else pieces.arms[0]
            strategy = "MAR" if str(r["strategy"]).startswith("delta=") else str(r["strategy"])
            if r.get("variance", "conditional_mean") not in ("conditional_mean", "information_anchored"):
                return False
            eff = effects[(arm, strategy)]
            j = int(np.searchsorted(eff.weeks, int(r["week"])))
            mean = eff.draws[:, j].mean() + float(r.get("delta", 0.0) or 0.0) * eff.share_treatment[j]
            if not np.isclose(mean, float(r["mean"]), rtol=1e-9, atol=1e-9):
                return False
    except (KeyError, IndexError, TypeError, ValueError):
        return False
    return len(saved) > 0


def _saved_tipping(sens, pieces) -> dict:
    """Per active arm, week and kind, (exact delta or factor, or nan; threshold, interval, week) from a saved
    tipping_point.csv (a file without `delta_kind` holds the additive one only)."""
    table = sens.tables.get("tipping_point")
    out = {}
    if table is None or not len(table):
        return out
    kinds = table[DELTA_KIND_COLUMN].astype(str) if DELTA_KIND_COLUMN in table else pd.Series("additive", index=table.index)
    for kind in DELTA_KINDS:
        for arm in pieces.arms:
            rows = table[kinds == kind]
            rows = rows[rows[CONTRAST_COLUMN] == pieces.contrast(arm)] if CONTRAST_COLUMN in rows else rows
            for week, at in rows.groupby("week", sort=False):
                r = at.iloc[0]
                exact = float(r["tipping_exact"]) if pd.notna(r.get("tipping_exact")) else np.nan
                out[(arm, int(week), kind)] = (exact, float(r["threshold"]), FLIP_INTERVAL_PROB, int(week))
    return out


def saved_submission_tables(folder: str | Path, loaded: dict | None = None, sensitivity: dict | None = None) -> dict[str, SubmissionTables]:
    """Every saved fit's submission tables (diagnose.py): the efficacy table from its posterior and trial_data; the
    sensitivity table from freshly run analyses (diagnose.py --sensitivity), else from saved ones recomputed
    (`_saved_draws`). The MCID is the fit's estimates.csv's (its p_below_-MCID column), else the default."""
    from inference.storage import DATA_GROUP, load_fit, saved_dataset

    from .saved import saved_names

    folder = Path(folder)
    loaded, sensitivity = loaded or {}, sensitivity or {}
    out = {}
    for name in saved_names(folder):
        t0 = time.perf_counter()
        idata = loaded[name] if name in loaded else load_fit(folder / name / "idata.nc", complete=False)
        if DATA_GROUP not in idata.groups():
            out[name] = SubmissionTables(name, _frame([]), notes={"efficacy": "the saved fit holds no trial data (made by an older "
                                                                  "version), so the baseline of each arm is not known: refit it"})
            continue
        dataset = saved_dataset(idata)
        est = folder / name / "estimates.csv"
        columns = pd.read_csv(est, nrows=0).columns if est.is_file() else []
        mcid = next((float(c.removeprefix("p_below_-")) for c in columns if c.startswith("p_below_-")), DEFAULT_MCID)
        model = str(idata.posterior.attrs.get("model", "") or name).strip('"')
        sens = sensitivity.get(name)
        draws, why = None, ""
        if sens is not None and sens.saved and "sensitivity" not in sens.notes:
            draws, why = _saved_draws(folder, name, idata, dataset, sens, model)
        source = str(idata.posterior.attrs.get("data_source", "")).strip('"')
        result = submission_tables(name, idata, dataset, mcid, model, sens, draws, source)
        kept = _kept_rows(folder / name / ARD_FILE, sens, name) if why and len(result.ard) else None
        if kept is not None:  # the draws are gone but the earlier ARD holds the saved table's numbers: keep them
            result.ard = pd.concat([result.ard, kept], ignore_index=True)
            result.notes.pop("sensitivity", None)
            result.texts["ice_source"] = _ice_source(sens.tables["sensitivity"])
        elif why and "sensitivity" in result.notes:
            result.notes["sensitivity"] = why
        result.timings["ard_s"] = time.perf_counter() - t0
        out[name] = result
    return out


def read_ard(path: str | Path) -> pd.DataFrame:
    """An ard.csv as written (ARD_COLUMNS; arm_or_contrast '' where empty, visit Int64 with <NA> where empty)."""
    ard = pd.read_csv(path, keep_default_na=False, na_values={"visit": [""], "value": [""]})
    missing = [c for c in ARD_COLUMNS if c not in ard]
    if missing:
        raise ValueError(f"{path}: not an analysis results dataset (no column {', '.join(missing)})")
    ard = ard[list(ARD_COLUMNS)].astype({c: str for c in ARD_COLUMNS if c not in ("visit", "value")})
    ard["visit"] = ard["visit"].astype("Int64")
    ard["value"] = ard["value"].astype(float)
    return ard


def _kept_rows(path: Path, sens, name: str) -> pd.DataFrame | None:
    """The sensitivity rows of an earlier ard.csv when they hold exactly the means of the saved sensitivity.csv (the
    numbers of the same analyses, from the draws of that time); else None."""
    saved = sens.tables.get("sensitivity") if sens is not None else None
    if saved is None or not len(saved) or not path.is_file():
        return None
    try:
        old = read_ard(path)
    except (ValueError, OSError, pd.errors.ParserError):
        return None
    rows = old[old["table"] == "sensitivity"].reset_index(drop=True)
    means = {(a, c, int(v)): x for a, c, v, st, x in zip(rows["analysis"], rows["arm_or_contrast"], rows["visit"], rows["statistic"],
                                                         rows["value"]) if st == "mean" and not pd.isna(v)}
    contrasts = sorted({c for _, c, _ in means})
    for r in saved.to_dict("records"):
        strategy = str(r["strategy"])
        analysis = sensitivity_analysis(name, "MAR", float(strategy.removeprefix("delta="))) if strategy.startswith("delta=") else \
            sensitivity_analysis(name, strategy, variance=str(r.get("variance", "conditional_mean")))
        contrast = str(r[CONTRAST_COLUMN]) if CONTRAST_COLUMN in r else (contrasts[0] if len(contrasts) == 1 else "")
        x = means.get((analysis, contrast, int(r["week"])))
        if x is None or not np.isclose(x, float(r["mean"]), rtol=1e-12, atol=1e-12):
            return None
    return rows if len(rows) else None


def _ice_source(saved: pd.DataFrame) -> str:
    """The intercurrent-event table a saved sensitivity.csv followed, from its estimand text ('' for none)."""
    texts = saved["estimand"].astype(str) if "estimand" in saved else []
    found = next((m.group(1) for t in texts if (m := re.search(r"intercurrent events of (.+?) \(\d+ participants\)", t))), "")
    return found

