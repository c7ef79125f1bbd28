"""One self-contained HTML report per run: no external file, script or font; images are base64 PNGs.

`render_report(run)` takes a `RunDiagnostics` (diagnostics.run) and returns the HTML text; it
computes nothing itself. Sections: the answer first (per fitted model, each active arm's effect by
week, the fitted trajectories of every arm against the observed means, every contrast at every visit
with P(each arm is best) (contrasts.csv, diagnostics/contrasts.py) and the biomarker effects, each a
figure with one plain sentence, and the estimand of every row; diagnostics/summary.py), then the data
summary, the model comparison, and per model the effect estimates with probability statements and
their estimands, the sensitivity analyses when the run made them (strategies with both variances and the tipping
point at the end of treatment or at each week of --sensitivity-weeks, responders and remission, prior sensitivity;
diagnostics/sensitivity_analyses.py `model_sensitivity`), convergence, posterior predictive checks and priors; last the submission tables (the efficacy
and sensitivity tables of diagnostics/csr_tables.py, as in <model>/efficacy_table.rtf) and the software versions.
"""

from __future__ import annotations

import base64
import html
import json

import numpy as np
import pandas as pd

from models.effects import ESTIMAND_COLUMNS

from .compare import CLEAR_DIFF_SE
from .contrasts import key_rows
from .convergence import EBFMI_MIN, ESS_BULK_MIN, ESS_TAIL_MIN, MCSE_SD_RATIO_MAX, RHAT_MAX, TREEDEPTH_SATURATED_MAX
from .loo import PARETO_K_MAX, QUANTITY
from .ppc import PPC_TAIL
from .prior_sensitivity import PRIOR_SENSITIVITY_THRESHOLD
from .sensitivity import REFERENCE_BASED
from .table_formats import html as table_html_csr

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #446}h2{border-bottom:1px solid #aab;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}td,th{border:1px solid #ccd;padding:.2em .5em;text-align:right}
th{background:#eef}td:first-child,th:first-child{text-align:left}
.pass{color:#161;font-weight:bold}.fail{color:#a11;font-weight:bold}.note{background:#f6f6fb;border-left:4px solid #88a;padding:.5em 1em}
.warn{background:#fff4e5;border-left:4px solid #e90;padding:.5em 1em}img{max-width:100%;height:auto;border:1px solid #ddd;margin:.4em 0}
.estimand{font-size:.85em;color:#445}details{margin:.4em 0}.text td{text-align:left}.pair{display:flex;gap:1em;align-items:flex-start}.pair figure{flex:1;min-width:0}figure{margin:0 0 1em 0}figcaption{font-size:.9em}
.csr caption{text-align:left;caption-side:top;padding:.3em 0}.csr tr.group td{border-top:2px solid #889}.csr td,.csr th{text-align:center;white-space:nowrap}.csr td.label,.csr th:first-child{text-align:left;white-space:normal}
ol.footnotes,p.source{font-size:.8em;color:#445;max-width:1000px}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
"""


def esc(x) -> str:
    return html.escape(str(x))


def img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table_html(df: pd.DataFrame, index: bool = False, floatfmt: str = "{:.3g}") -> str:
    if df is None or len(df) == 0:
        return "<p>(empty)</p>"

    def fmt(v):
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else floatfmt.format(v)
        return esc(v)

    d = df.reset_index() if index else df
    head = "".join(f"<th>{esc(c)}</th>" for c in d.columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in d.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def arms_sentence(labels: tuple[str, ...]) -> str:
    """The arms of the trial, for the data section (labels: every arm, the control first)."""
    if len(labels) == 2:
        return f"Control arm: <b>{esc(labels[0])}</b>, treatment arm: <b>{esc(labels[1])}</b>."
    return (f"Control (reference) arm: <b>{esc(labels[0])}</b>; {len(labels) - 1} active arms, each compared with it: "
            + ", ".join(f"<b>{esc(a)}</b>" for a in labels[1:]) + ".")


def data_section(info: dict, labels: tuple[str, ...]) -> str:
    if not info:
        return "<h2>Data</h2><p>(no data summary recorded)</p>"
    n = info.get("participants", 0)
    by_arm = info.get("by_arm", {})
    arms = ", ".join(f"{esc(k)}: {v}" for k, v in by_arm.items())
    weeks = info.get("observed_by_week", {})
    rows = []
    for w, k in weeks.items():
        rows.append({"week": int(w), "visits observed": int(k), "missing": n - int(k), "dropout (% of participants)": 100 * (n - int(k)) / n if n else float("nan")})
    out = [
        "<h2>Data</h2>",
        f"<p>{n} participants ({arms}), {info.get('sites', '?')} sites, {info.get('visits_observed', '?')} observed visits. "
        f"{arms_sentence(tuple(labels))}</p>",
        "<h3>Visits observed and dropout by week</h3>",
        table_html(pd.DataFrame(rows), floatfmt="{:.1f}"),
    ]
    if info.get("changes"):
        out.append("<h3>What was changed or left out when the data were read</h3><ul>"
                   + "".join(f"<li>{esc(t)}</li>" for t in info["changes"]) + "</ul>")
    if "baseline_markers_observed" in info:
        out.append(
            "<h3>Biomarker availability (baseline participant x marker values)</h3>"
            + table_html(
                pd.DataFrame(
                    [
                        {"status": "observed", "values": info["baseline_markers_observed"]},
                        {"status": "missing (imputed in the model)", "values": info.get("baseline_markers_imputed", 0)},
                        {"status": "below detection limit (censored)", "values": info.get("baseline_markers_below_lod", 0)},
                    ]
                )
            )
        )
    else:
        out.append("<p>No biomarkers in this dataset.</p>")
    return "\n".join(out)


def probability_statements(est: pd.DataFrame) -> str:
    """Each row of an estimates table in words (rows of several active arms each name their arm)."""
    items = []
    multi = len({str(q).split(" - ")[0] for q in est["quantity"] if " - " in str(q)}) > 1
    mcid_cols = [c for c in est.columns if c.startswith("p_below_-")]
    for _, r in est.iterrows():
        q = str(r["quantity"])
        hdi = [c for c in est.columns if c.startswith("hdi_")]
        text = f"<b>{esc(q)}</b>: mean {r['mean']:.2f} ({esc(r.get('unit', ''))})"
        if len(hdi) == 2:
            text += f", 94% HDI {r[hdi[0]]:.2f} to {r[hdi[1]]:.2f}"
        if " - " in q and "p_below_0" in r and pd.notna(r["p_below_0"]):
            text += f"; posterior probability that the {esc(q.split(' - ')[0]) + ' arm' if multi else 'treatment arm'} is better (difference &lt; 0): {r['p_below_0']:.2f}"
            for c in mcid_cols:
                if pd.notna(r.get(c)):
                    text += f"; that the benefit exceeds {esc(c.removeprefix('p_below_-'))} points: {r[c]:.2f}"
        elif "p_below_0" in r and pd.notna(r["p_below_0"]):
            text += f"; P(&lt; 0) = {r['p_below_0']:.2f}"
        if all(c in r and isinstance(r[c], str) and r[c] for c in ESTIMAND_COLUMNS):
            text += '<br><span class="estimand">Estimand: ' + esc(estimand_sentence(r)) + "</span>"
        items.append(f"<li>{text}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def estimand_sentence(row) -> str:
    """A row's estimand in the ICH E9(R1) attributes, as one line."""
    return (f"population: {row['population']}; variable: {row['variable']}; intercurrent events: {row['intercurrent_events']}; "
            f"summary: {row['summary']}")


def priors_table(priors: dict) -> pd.DataFrame:
    rows = []
    for name, p in (priors or {}).items():
        if isinstance(p, dict):
            params = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in (p.get("params") or {}).items())
            rows.append({"parameter": name, "prior": f"{p.get('dist', '?')}({params})", "reason": p.get("reason", "")})
        else:
            rows.append({"parameter": name, "prior": str(p), "reason": ""})
    return pd.DataFrame(rows)


def _pct(x) -> str:
    return "" if x is None or pd.isna(x) else f"{100 * x:.1f}%"


VARIANCE_NAMES = {"conditional_mean": "conditional mean", "information_anchored": "information anchored"}


def strategies_table(table: pd.DataFrame, week: int) -> pd.DataFrame:
    """sensitivity.csv's rows at one week: [contrast, for a trial of several active arms,] strategy, [variance, when the
    table has the column,] mean, 94% interval, P(benefit)."""
    rows = table[table["week"] == week]
    lo, hi = [c for c in table.columns if c.startswith("hdi_")][:2]
    out = pd.DataFrame({
        "strategy": rows["strategy"].astype(str), "mean": rows["mean"],
        "94% interval": [f"{a:.2f} to {b:.2f}" for a, b in zip(rows[lo], rows[hi])],
        "P(benefit)": rows["p_below_0"], "share imputed after dropout": [_pct(x) for x in rows.get("dropout_share", [])],
    })
    if "variance" in rows:  # shown for J2R, CR and CIR only: MAR's and the delta rows' variance is MAR's either way
        reference = rows["strategy"].astype(str).isin(REFERENCE_BASED)
        out.insert(1, "variance", [VARIANCE_NAMES.get(str(v), str(v)) if r else "" for v, r in zip(rows["variance"], reference)])
    if "contrast" in rows:
        out.insert(0, "contrast", rows["contrast"].astype(str))
    return out


ESTIMAND_NAMES = {"MAR": "hypothetical (MAR imputation)", "NRI": "composite (missing = failure)",
                  "treatment_policy": "treatment policy (retrieved dropouts)"}


def responders_summary(table: pd.DataFrame, week: int) -> pd.DataFrame:
    """responders.csv at one week, one row per estimand and outcome: the rates, risk difference, P(better), NNT; with
    several active arms, the last three once per active arm against the control arm (named in the column)."""
    rows = []
    lo, hi = [c for c in table.columns if c.startswith("hdi_")][:2]
    at = table[table["week"] == week]
    several = (at["quantity"] == "risk_difference").sum() > at.groupby(["estimand", "outcome"]).ngroups
    for (estimand, outcome), g in at.groupby(["estimand", "outcome"], sort=False):
        row = {"estimand": ESTIMAND_NAMES.get(estimand, estimand), "outcome": outcome}
        for r in g.to_dict("records"):
            q = r["quantity"]
            arm = str(r["arm"]).split(" - ")[0].split(" vs ")[0]  # the active arm of a contrast row
            suffix = f", {r['arm'].replace(' vs ', ' - ')}" if several else ""
            if q.startswith("rate_"):
                row[f"rate, {r['arm']}"] = f"{_pct(r['mean'])} ({_pct(r[lo])} to {_pct(r[hi])})"
            elif q == "risk_difference":
                row[f"risk difference{suffix}"] = f"{100 * r['mean']:.1f} points ({100 * r[lo]:.1f} to {100 * r[hi]:.1f})"
                row[f"P({arm} better)" if several else "P(treatment better)"] = f"{r['p_above_0']:.2f}"
            elif q == "nnt":
                row[f"NNT{suffix}"] = f"{r['median']:.1f}" if pd.notna(r["median"]) else "not defined"
        rows.append(row)
    return pd.DataFrame(rows)


def sensitivity_section(s, heading: str = "h3", title: str = "Sensitivity and estimands") -> str:
    """One model's sensitivity analyses (diagnostics/sensitivity_analyses.py ModelSensitivity); a note for what the model does not support."""
    week = s.end_week
    weeks = getattr(s, "report_weeks", (week,))  # the weeks the analyses report (--sensitivity-weeks), else the end of treatment
    out = [f'<{heading} id="sensitivity-{esc(s.name)}">{esc(title)}</{heading}>']
    if s.saved:
        out.append(f'<p class="note">Read from the tables in <code>{esc(s.name)}/</code>, as last computed '
                   "(<code>diagnose.py RESULTS --sensitivity</code> recomputes them).</p>")
    notes = dict(s.notes)
    strategies = s.tables.get("sensitivity")
    if strategies is not None and len(strategies):
        shown = [w for w in weeks if (strategies["week"] == w).any()] or [int(strategies["week"].iloc[-1])]
        which = ("Each active arm's difference from the control arm" if "contrast" in strategies
                 else "The treatment - control difference")
        out.append(f"<p>{which} when the scores missing after "
                   "dropout follow the model's own arm (MAR), jump to the reference arm (J2R), copy it throughout (CR), copy its "
                   "changes from the last visit (CIR), or are made delta points worse (delta rows). Lower is better.</p>")
        if "variance" in strategies:
            out.append("<p>J2R, CR and CIR come with two variances. <b>Conditional mean</b>: the repeated-sampling variance of "
                       "the conditional-mean estimator, smaller the more is imputed. <b>Information anchored</b>: the MAR "
                       "posterior moved by the anchoring delta (the delta adjustment whose mean is the strategy's, column "
                       "<code>anchoring_delta</code>), which keeps the information of the MAR analysis; it is what regulators "
                       "usually ask for.</p>")
        for w in shown:
            phase = ("end of treatment" if int(w) == int(week) else "off-treatment follow-up" if int(w) > int(week)
                     else "during treatment")
            out.append(f"<p><b>Week {int(w)} ({phase})</b></p>")
            at = strategies[(strategies["week"] == w) & (strategies["strategy"] == "MAR")]
            if len(at) and "estimand" in at:
                for text in at["estimand"]:
                    out.append(f'<p class="estimand">Estimand: {esc(text)}</p>')
            out.append(table_html(strategies_table(strategies, w), floatfmt="{:.2f}"))
    elif "sensitivity" in notes:
        out.append(f'<p class="note">No reference-based strategies, delta adjustment or tipping point for this model: '
                   f'{esc(notes.pop("sensitivity"))}</p>')
    notes.pop("tipping_point", None)
    for message in s.tipping_messages or ((s.tipping_message,) if s.tipping_message else ()):  # one per active arm
        out.append(f"<p><b>Tipping point</b>: {esc(message)}.</p>")
    if s.tipping_message:
        out.append(img(s.tipping_figure, f"{s.name}: tipping point"))
    responders = s.tables.get("responders")
    if responders is not None and len(responders):
        out.append(f"<p><b>Response</b> (at least a 50% reduction from baseline) <b>and remission</b> at week {week}, "
                   "rate per arm with 94% HDI, risk difference (percentage points), P(treatment better), number needed to treat "
                   f"(full table: <code>{esc(s.name)}/responders.csv</code>):</p>")
        out.append(table_html(responders_summary(responders, week)))
    elif "responders" in notes:
        out.append(f'<p class="note">No responder or remission estimands for this model: {esc(notes.pop("responders"))}</p>')
    prior = s.tables.get("prior_sensitivity")
    if prior is not None and len(prior):
        out.extend(prior_sensitivity_lines(prior))
    return "\n".join(out)


def prior_sensitivity_lines(prior: pd.DataFrame) -> list[str]:
    """prior_sensitivity.csv in the report: the flagged effects, or that none is flagged; and where power-scaling
    could not be done (a prior left out, no prior at all) or cannot be trusted (Pareto k above PARETO_K_MAX)."""
    t = PRIOR_SENSITIVITY_THRESHOLD
    out = []
    flagged = prior[prior["prior_sensitive"].astype(bool)]
    assessed = prior["prior_sensitivity"].notna()
    if len(flagged):
        items = "; ".join(f"{r.effect} ({r.diagnosis}, prior sensitivity {r.prior_sensitivity:.3f})" for r in flagged.itertuples(index=False))
        out.append(f'<p class="warn"><b>Prior-sensitive</b> (power-scaling, prior sensitivity at or above {t:g}): {esc(items)}.</p>')
    elif assessed.all():
        out.append(f'<p class="note">No reported effect is prior-sensitive (power-scaling: every prior sensitivity below {t:g}).</p>')
    elif assessed.any():
        missing = "; ".join(prior.loc[~assessed, "effect"].astype(str))
        out.append(f'<p class="warn">No assessed effect is prior-sensitive (power-scaling: prior sensitivity below {t:g}), '
                   f"but the prior sensitivity of {esc(missing)} could not be computed.</p>")
    else:
        out.append('<p class="warn"><b>Prior sensitivity not assessed</b>: no prior of this fit could be power-scaled.</p>')
    left_out = prior["not_power_scaled"].dropna().astype(str).str.strip() if "not_power_scaled" in prior else pd.Series(dtype=str)
    left_out = left_out[left_out != ""]  # '' (read back from the csv as NaN): every prior power-scaled
    if len(left_out):
        left_out = left_out.iloc[0]
        out.append(f'<p class="note"><b>Not power-scaled</b>: {esc(left_out)}; the prior sensitivities leave these priors out.</p>')
    for component in ("prior", "likelihood"):
        k = prior[f"{component}_pareto_k"].max() if f"{component}_pareto_k" in prior else float("nan")
        if k > PARETO_K_MAX:
            out.append(f'<p class="warn"><b>Power-scaling the {component} is unreliable</b> for this fit (Pareto k {k:.2f} above '
                       f"{PARETO_K_MAX}): its importance weights are too uneven, so the {component} sensitivities are approximate.</p>")
    return out


def model_section(m, sensitivity=None) -> str:
    v = m.verdict
    status = '<span class="pass">PASS</span>' if v.ok else '<span class="fail">FAIL</span>'
    out = [f'<h2 id="model-{esc(m.name)}">Model: {esc(m.name)}</h2>', f"<p>{esc(m.description)}</p>" if m.description else ""]
    out.append(f"<p>Likelihood: {esc(m.likelihood)}; fitted {esc(m.created)}; sampler settings: <code>{esc(json.dumps(m.settings))}</code></p>")
    out.append("<h3>Effect estimates</h3>")
    if m.estimates is not None and len(m.estimates):
        out.append(probability_statements(m.estimates))
        out.append(table_html(m.estimates.drop(columns=["mcse_mean", *ESTIMAND_COLUMNS], errors="ignore"), floatfmt="{:.2f}"))
    else:
        out.append("<p>(no effect summaries in this model)</p>")
    if sensitivity is not None:
        out.append(sensitivity_section(sensitivity))
    out.append(f"<h3>Convergence: {status}</h3>")
    out.append(
        f'<p class="note">Thresholds: R-hat &le; {RHAT_MAX}, bulk ESS &ge; {ESS_BULK_MIN}, tail ESS &ge; {ESS_TAIL_MIN}, no divergences, '
        f"MCSE &le; {MCSE_SD_RATIO_MAX} posterior SD, at most {TREEDEPTH_SATURATED_MAX:.0%} of draws at the maximum tree depth, E-BFMI &ge; {EBFMI_MIN} in every chain.</p>"
    )
    out.append(f"<pre>{esc(v.text())}</pre>")
    judged = ("participant-level and latent biomarker values are included in the verdict but not listed" if not v.population_only
              else "on this fit's fast path the verdict judges these and the quantities derived from them; the participant-level values, "
                   "drawn exactly from their conditional posterior given each draw, inherit their mixing")
    out.append(f"<p>Population-level parameters ({judged}):</p>")
    out.append(table_html(m.convergence_rows, index=True))
    out.append(img(m.figures.get("rank"), "rank plot") + img(m.figures.get("energy"), "energy plot"))
    if m.ppc is None:
        out.append("<h3>Leave-one-out</h3>")
        out.append('<p class="note">This model\'s outcome is the change from baseline, so the checks of the scores do not apply; '
                   "it is compared with the trajectory models on the post-baseline scores given the baseline.</p>")
        out.append("<pre>" + esc("\n".join(r.text() for r in m.loo.values())) + "</pre>")
        out.append("<h3>Priors used</h3>")
        out.append(table_html(priors_table(m.priors)) if m.priors else "<p>(no priors recorded)</p>")
        return "\n".join(out)
    out.append("<h3>Posterior predictive checks</h3>")
    flags = m.ppc.flags()
    if flags:
        out.append('<div class="warn"><b>Flagged checks</b> (observed statistic outside the central ' f"{1 - 2 * PPC_TAIL:.0%} of replications):<ul>" + "".join(f"<li>{esc(f)}</li>" for f in flags) + "</ul></div>")
    else:
        out.append(f'<p class="note">No check flagged: every observed statistic lies within the central {1 - 2 * PPC_TAIL:.0%} of its replications and the LOO-PIT is consistent with uniform.</p>')
    out.append(img(m.figures.get("trajectory"), "observed vs replicated mean trajectory by arm"))
    out.append(table_html(m.ppc.trajectory.drop(columns=["statistic"]), floatfmt="{:.3g}"))
    out.append(img(m.figures.get("visits"), "replicated score distribution at each visit"))
    cols = [c for c in m.ppc.visits.columns if not c.startswith(("observed_q", "replicated_q"))]
    out.append("<p>Score SD at each visit, observed vs replicated:</p>" + table_html(m.ppc.visits[cols]))
    out.append(img(m.figures.get("rates"), "response and remission rates by arm"))
    out.append(table_html(m.ppc.rates))
    p = m.ppc.loo_pit
    out.append(
        f"<p>LOO-PIT over {p['n_obs']} observations: KS statistic {p['ks_statistic']:.3f} (p = {p['ks_p']:.3g}), "
        f"share in the outer 10%: {p['share_outer_10pct']:.3f} (0.10 when calibrated), SD {p['pit_sd']:.3f} (0.289 when uniform).</p>"
    )
    out.append(img(m.figures.get("loo_pit"), "LOO-PIT calibration"))
    out.append("<h3>Leave-one-out</h3>")
    out.append("<pre>" + esc("\n".join(r.text() for r in m.loo.values())) + "</pre>")
    out.append("<h3>Priors used</h3>")
    out.append(table_html(priors_table(m.priors)) if m.priors else "<p>(no priors recorded)</p>")
    return "\n".join(out)


def summary_section(run) -> str:
    """The answer first: per fitted model, its figures with one plain sentence each."""
    if not run.answers:
        return ""
    out = ['<h2 id="summary">Summary: what the models say</h2>']
    # models with a treatment effect lead (in the run's order); a model without one (e.g. null) follows
    order = sorted(run.answers, key=lambda n: run.answers[n].differences.empty)
    for name in order:
        a, figs = run.answers[name], run.answer_figures.get(name, {})
        out.append(f"<h3>{esc(name)}</h3>" + (f"<p>{esc(a.description)}</p>" if a.description else ""))
        cells = [f"<figure>{img(figs.get(key), f'{name}: {key}')}<figcaption>{esc(a.sentences[key])}</figcaption></figure>"
                 for key in ("effects", "trajectory", "contrasts", "markers") if key in a.sentences]
        out.append('<div class="pair">' + "".join(cells[:2]) + "</div>" + "".join(cells[2:]))
        key = key_rows(getattr(a, "contrasts", None))
        if len(key):
            shown = key.drop(columns=["mcse_mean", *ESTIMAND_COLUMNS], errors="ignore")
            shown = shown.drop(columns=[c for c in shown.columns if shown[c].isna().all()])
            out.append(f"<p>Contrasts at week {int(key['week'].iloc[0])} (end of treatment) and P(each arm is best) "
                       "(for p_best rows, <i>mean</i> is the probability):</p>" + table_html(shown, floatfmt="{:.3g}"))
        if getattr(a, "estimands", None) is not None and len(a.estimands):
            out.append('<details><summary>Estimands of these rows (ICH E9(R1))</summary><div class="text">'
                       + table_html(a.estimands) + "</div></details>")
    note = [m for m in run.answers if m not in run.models]
    if note:
        out.append(f'<p class="note">{esc(", ".join(note))}: outcome other than the visit scores, so not in the checks and the '
                   "comparison below; their full estimates are in their folders (estimates.csv, convergence.txt).</p>")
    return "\n".join(out)


def comparison_section(run) -> str:
    if not run.models:
        return ""
    out = ['<h2 id="comparison">Model comparison (leave-one-out)</h2>']
    out.append(
        f'<p class="note">elpd: expected log predictive density (higher is better); dse: SE of the difference to the best model; '
        f"weight: stacking weight. A difference is called clear beyond {CLEAR_DIFF_SE:g} dse. PSIS estimates with Pareto k &gt; {PARETO_K_MAX} "
        "are replaced by refits (exact leave-one-out, or grouped K-fold by participant) where the run could refit; otherwise marked unreliable.</p>"
    )
    for msg in run.comparison_notes:
        out.append(f'<p class="warn">{esc(msg)}</p>')
    for level, table in run.comparisons.items():
        title = {"participant": "New participants: leave-one-participant-out", "visit": "New visits of known participants: pointwise LOO"}.get(level, level)
        out.append(f"<h3>{esc(title)}</h3>")
        results = [m.loo[level] for n, m in run.models.items() if n in table.index and level in m.loo]
        if results and all(r.integrated for r in results):
            out.append(f'<p class="note">Scored on {esc(QUANTITY[level])}: the participant effects are integrated out '
                       "(or the visit is predicted from the participant's other visits), so leaving a unit out only reweights the "
                       "population parameters and PSIS is reliable; the baseline score is conditioned on, as in an MMRM.</p>")
        elif results:
            out.append('<p class="note">Scored on the log-likelihood conditional on each participant\'s own effects (the model has no '
                       "integrated form): leaving a participant out changes those effects, so high Pareto k is expected at the participant level.</p>")
        out.append(f"<p><b>{esc(run.plain_language.get(level, ''))}</b></p>")
        out.append(table_html(table, index=True, floatfmt="{:.2f}"))
    out.append(img(run.figures.get("pareto_k"), "Pareto k per participant"))
    return "\n".join(out)


def borrowing_section(run) -> str:
    """The MAP prior from past trials (diagnostics/borrowing.py's record, map_prior.json): the prior, its ESS, the
    prior-data conflict check and each model's posterior of the control change at the end of treatment."""
    b = getattr(run, "borrowing", None)
    if not b:
        return ""
    s, new, conflict, ess = b["settings"], b["new_trial"], b["conflict"], b["ess"]
    robust = s["robust_weight"] > 0
    hist = pd.DataFrame(b["historical"])
    mix = b["robust_mixture"] if robust else b["mixture"]
    comps = pd.DataFrame({"weight": mix["weights"], "mean": mix["means"], "sd": mix["sds"]})
    if robust:
        comps["component"] = ["MAP"] * (len(comps) - 1) + ["vague"]
    models = pd.DataFrame([{"model": n, **v} for n, v in b.get("models", {}).items()])
    p = conflict["p_value"]
    out = [
        '<h2 id="borrowing">Borrowing the control arm from past trials (MAP prior)</h2>',
        f"<p>The control arm's mean change from baseline at the end of treatment (week {new['week']}) has a "
        f"meta-analytic-predictive prior from {len(hist)} past trials ({esc(str(s.get('source') or ''))}): the prediction of a new "
        f"trial's control mean from a hierarchical normal model of theirs (between-trial SD tau ~ HalfNormal({s['tau_scale']:.3g}), "
        f"i.e. {s['tau_scale_over_sigma']:.2g} x the unit SD {s['sigma']:.3g}), approximated by a mixture of "
        f"{len(b['mixture']['weights'])} normal(s)"
        + (f", robustified with a vague component of weight {s['robust_weight']:g} (Normal({s['vague_mean']:.3g}, {s['vague_sd']:.3g}): one participant's information)" if robust else "")
        + f". It is put on: {esc(b['parameter'].split('models: ')[-1])}.</p>",
        f"<p>Effective sample size of the prior: {ess['robust' if robust else 'map']['elir']:.1f} participants (ELIR; "
        f"{ess['robust' if robust else 'map']['moment']:.1f} by moments"
        + (f"; {ess['map']['elir']:.1f} without the vague component" if robust else "")
        + f"), against {ess['historical_total_n']:.0f} control participants in the past trials: the between-trial "
        "variation is what discounts them.</p>",
        f"<p>Prior-data conflict: the new trial's control arm (observed cases at week {new['week']}: n = {new['n_observed']}, "
        f"mean change {new['mean']:.2f}, SE {new['se']:.2f}) has predictive p-value {p:.3f} under the MAP prior "
        + ("(below 0.05: the new control arm differs from what past trials predict; the robust prior's vague component then "
           "takes over, and results that lean on the borrowing deserve caution)" if p < 0.05 else "(no sign of conflict)")
        + (f". The vague component's weight goes from {conflict['vague_weight_prior']:.2f} before these data to "
           f"{conflict['vague_weight_posterior']:.2f} after them." if robust else ".") + "</p>",
        table_html(comps.round(3)),
        "<p>Past trials' control arms (mean change and SD of the change at their primary visit):</p>",
        table_html(hist),
    ]
    if len(models):
        out += [f"<p>Each model's control change at week {new['week']}: the prior's mean and SD, the posterior's mean, SD and "
                "94% HDI.</p>", table_html(models.round(3))]
    out.append(img(run.figures.get("map_prior"), "MAP prior, new control data and posteriors"))
    return "\n".join(out)


def submission_section(run) -> str:
    """Every model's submission tables (diagnostics/csr_tables.py), rendered from its ARD as in its RTF and DOCX files;
    a note for a model without them."""
    tables = getattr(run, "submission", None) or {}
    if not tables:
        return ""
    out = ['<h2 id="submission">Submission tables</h2>',
           '<p class="note">The efficacy and sensitivity tables as written for a clinical study report: '
           "<code>&lt;model&gt;/efficacy_table.rtf</code> and <code>.docx</code>, <code>sensitivity_table.rtf</code> and "
           "<code>.docx</code>; every number is a row of <code>&lt;model&gt;/ard.csv</code>, the analysis results dataset. "
           "Credible intervals are 95% equal-tailed (posterior quantiles), not the 94% HDIs of the sections above.</p>"]
    for name, t in tables.items():
        out.append(f'<h3 id="submission-{esc(name)}">{esc(name)}</h3>')
        for stem, layout in t.layouts().items():
            out.append(table_html_csr(layout, f"{stem}-{name}"))
        for table, why in t.notes.items():
            out.append(f'<p class="note">No {esc(table)} table: {esc(why)}.</p>')
    return "\n".join(out)


def render_report(run) -> str:
    title = f"Trial analysis report: {run.title}"
    sensitivity = getattr(run, "sensitivity", None) or {}
    toc = "".join(f'<li><a href="#model-{esc(m.name)}">{esc(m.name)}</a>: convergence {"PASS" if m.verdict.ok else "FAIL"}, ' f"{len(m.ppc.flags()) if m.ppc is not None else 'no'} PPC flag(s)</li>" for m in run.models.values())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Data: <code>{esc(run.data_source)}</code> (checksum <code>{esc(run.checksum[:16])}</code>); report generated {esc(run.generated)}.</p>",
        f"<ul>{toc}</ul>" if toc else "",
        summary_section(run),
        data_section(run.data_summary, run.labels),
        borrowing_section(run),
        comparison_section(run),
        *[model_section(m, sensitivity.get(m.name)) for m in run.models.values()],
        *[sensitivity_section(s, "h2", f"Model: {s.name}: sensitivity and estimands") for n, s in sensitivity.items() if n not in run.models],
        submission_section(run),
        f"<h2>Software</h2><p><code>{esc(json.dumps(run.versions, sort_keys=True))}</code></p>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)
