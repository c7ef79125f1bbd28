"""Plot of assurance (plain and robust), power and type I error against sample size, with MCSE bands, and the
self-contained HTML page plan.html (figures as base64 PNGs; presentation layer only, it computes nothing).

A two-arm table's curves are its arm's; with several active arms the curves are those of "at least one
arm" (the table's "any" rows: family-wise type I error at effect 0), with each arm's assurance beside them.

With a control prior (a MAP prior from historical control arms) the table's drift rows are drawn against drift
instead (`plot_drift`: type I error and power, one line per design, with borrowing solid and without it dashed),
and plan.html has a section saying what the prior is and what drift means (`render_plan_html(borrowing=...)`, from
plan.json's `borrowing` record)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd


def _family(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The rows the figure's curves show (the arm's, or "any" with several active arms) and, with several,
    the per-arm rows."""
    if "arm" not in table or "any" not in set(table["arm"]):
        return table, None
    return table[table["arm"] == "any"], table[table["arm"] != "any"]


def plot_plan(table: pd.DataFrame, path: str | Path, target: float | None = None, title: str = "", control: str = "control") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "drift" in table:  # the drift rows have their own figure (plot_drift)
        table = table[table["drift"].isna()]
    family, per_arm = _family(table)
    several = per_arm is not None
    pops = list(dict.fromkeys(table["population"]))
    fig, axes = plt.subplots(1, len(pops), figsize=(5.5 * len(pops), 4.2), sharey=True, squeeze=False)
    for ax, pop in zip(axes[0], pops):
        part = family[(family["population"] == pop) & (family["scenario"] != "vague")]
        for scen, rows in part.groupby("scenario", sort=False):
            rows = rows.sort_values("n_per_arm")
            x, p, m = rows["n_per_arm"], rows["p_success"], rows["p_success_mcse"]
            style = "-" if scen == "assurance" else (":" if scen == "effect=0" else "--")
            label = "assurance" if scen == "assurance" else ("type I error (effect 0)" if scen == "effect=0" else f"power, {scen}")
            if several:
                label = {"assurance": "assurance, at least one arm", "effect=0": "family-wise type I error (global null)"}.get(scen, f"power of any arm, {scen}")
            (line,) = ax.plot(x, p, style, marker="o", ms=3, label=label)
            ax.fill_between(x, (p - 2 * m).clip(0, 1), (p + 2 * m).clip(0, 1), color=line.get_color(), alpha=0.2, lw=0)
            if scen == "assurance" and "robust_weight" in rows and rows["robust_weight"].iloc[0] > 0:
                r = rows["assurance_robust"]
                ax.plot(x, r, "-", color=line.get_color(), alpha=0.55, lw=2.5, label=f"robust assurance (weight {rows['robust_weight'].iloc[0]:g} vague)")
        if several:
            arms = per_arm[(per_arm["population"] == pop) & (per_arm["scenario"] == "assurance")]
            for arm, rows in arms.groupby("arm", sort=False):
                rows = rows.sort_values("n_per_arm")
                ax.plot(rows["n_per_arm"], rows["p_success"], "-.", marker=".", ms=3, lw=1, label=f"assurance, {arm} vs {control}")
        if target is not None:
            ax.axhline(target, color="grey", lw=0.8, ls="-.", label=f"target {target:g}")
        ax.set_title(f"population: {pop}")
        ax.set_xlabel(f"participants per arm ({control})")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("P(success)  (bands: +-2 MCSE)")
    axes[0][-1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_interim(table: pd.DataFrame, control: str = "control") -> bytes | None:
    """PNG of expected_n and the stop probabilities (efficacy, futility) against participants per arm, per
    population and scenario (with several active arms: the trial's, from the "any" rows: ending at a look
    with an arm stopped for efficacy, or with every arm dropped); None without interim looks (no
    stop-probability columns)."""
    if "p_stop_efficacy" not in table.columns:
        return None
    table, _ = _family(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pops = list(dict.fromkeys(table["population"]))
    fig, axes = plt.subplots(2, len(pops), figsize=(5.5 * len(pops), 7.5), sharex="col", squeeze=False)
    for j, pop in enumerate(pops):
        part = table[(table["population"] == pop) & (table["scenario"] != "vague")]
        for scen, rows in part.groupby("scenario", sort=False):
            rows = rows.sort_values("n_per_arm")
            x = rows["n_per_arm"]
            (line,) = axes[0][j].plot(x, rows["expected_n"], "-", marker="o", ms=3, label=str(scen))
            axes[1][j].plot(x, rows["p_stop_efficacy"], "-", marker="o", ms=3, color=line.get_color(), label=f"{scen}: efficacy")
            axes[1][j].plot(x, rows["p_stop_futility"], "--", marker="s", ms=3, color=line.get_color(), label=f"{scen}: futility")
        axes[0][j].set_title(f"population: {pop}")
        axes[0][j].set_ylabel("expected participants enrolled")
        axes[1][j].set_ylabel("P(stop at an interim look)")
        axes[1][j].set_ylim(0, 1)
        axes[1][j].set_xlabel(f"participants per arm ({control})")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    axes[1][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _drift_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The drift rows the curves show (the arm's, or "any" with several active arms)."""
    rows = table[table["drift"].notna()] if "drift" in table else table.iloc[:0]
    family, _ = _family(rows)
    return family


def plot_drift(table: pd.DataFrame, control: str = "control", nominal: float | None = None) -> bytes | None:
    """PNG of type I error (effect 0) and power (each other effect) against drift: one line per design (n per arm),
    with borrowing solid (bands +-2 MCSE) and without dashed, in the same colour; `nominal` a horizontal line on the
    type I error panel. None without drift rows."""
    rows = _drift_rows(table)
    if not len(rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    effects = sorted(set(rows["effect"]), key=lambda e: (e != 0, -e))
    fig, axes = plt.subplots(1, len(effects), figsize=(5.0 * len(effects), 4.2), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    designs = list(dict.fromkeys(zip(rows["population"], rows["n_per_arm"])))
    several_pops = len({p for p, _ in designs}) > 1
    for ax, effect in zip(axes[0], effects):
        part = rows[rows["effect"] == effect]
        for k, (pop, n) in enumerate(designs):
            colour = colours[k % len(colours)]
            name = f"n {n:g}" + (f" ({pop})" if several_pops else "")
            for borrowing, style in (("map", "-"), ("none", "--")):
                line = part[(part["population"] == pop) & (part["n_per_arm"] == n) & (part["borrowing"] == borrowing)].sort_values("drift")
                if not len(line):
                    continue
                x, p, m = line["drift"], line["p_success"], line["p_success_mcse"]
                ax.plot(x, p, style, color=colour, marker="o" if borrowing == "map" else None, ms=3,
                        label=f"{name}, " + ("MAP prior" if borrowing == "map" else "no borrowing"))
                if borrowing == "map":
                    ax.fill_between(x, (p - 2 * m).clip(0, 1), (p + 2 * m).clip(0, 1), color=colour, alpha=0.15, lw=0)
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        if effect == 0 and nominal is not None:
            ax.axhline(nominal, color="grey", lw=0.8, ls="-.", label=f"alpha {nominal:g}")
        ax.set_title("type I error (effect 0)" if effect == 0 else f"power, effect {effect:g}")
        ax.set_xlabel(f"drift: true {control} mean change - MAP mean")
        ax.set_ylim(0, None if effect == 0 else 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("P(success)  (bands: +-2 MCSE, with the MAP prior)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def drift_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per design and drift: P(success) with its MCSE per effect, with the MAP prior and without borrowing."""
    rows = _drift_rows(table)
    out = rows.assign(column=[("type I error" if e == 0 else f"power at {e:g}") + (", MAP prior" if b == "map" else ", no borrowing")
                              for e, b in zip(rows["effect"], rows["borrowing"])],
                      value=[f"{p:.3f} ({m:.3f})" for p, m in zip(rows["p_success"], rows["p_success_mcse"])])
    wide = out.pivot_table(index=["population", "n_per_arm", "drift", "control_mean"], columns="column", values="value", aggfunc="first", sort=False)
    return wide.reset_index()


def _borrowing_html(table: pd.DataFrame, b: dict, control: str) -> list[str]:
    """plan.html's section on the control prior: what it is, what drift means, the curves and their table."""
    trials = ", ".join(f"{_esc(t['study'])} (n {t['n']})" for t in b["historical"])
    ess = b["ess"]
    w = b["primary_week"]
    robust = (f"robustified with weight {b['robust_weight']:g} on a vague component Normal({b['map_mean']:.3g}, {b['vague_sd']:.3g}<sup>2</sup>) "
              "(one participant's worth of information, Schmidli et al. 2014)" if b["robust_weight"] > 0 else "not robustified (no vague component)")
    calibrated = b.get("calibrated")
    reference = table.loc[table["borrowing"] == "none", "threshold"] if "borrowing" in table else pd.Series(dtype=float)
    nominal = calibrated["alpha"] if calibrated else (round(1 - float(reference.median()), 6) if len(reference) else None)
    text = [
        f"<p>The analysis puts a meta-analytic-predictive (MAP) prior on the {_esc(control)} arm's mean change from baseline at week {w:g}, "
        f"built from {len(b['historical'])} past trials' {_esc(control)} arms ({trials}; {_esc(b['source'])}): a hierarchical normal model of "
        f"their mean changes with between-trial SD tau ~ HalfNormal({b['tau_scale']:.3g}) (posterior median {b['tau_median']:.3g}), whose "
        f"predictive distribution for a new trial is approximated by a mixture of {b['components']} normals (mean {b['map_mean']:.3g}, "
        f"SD {b['map_sd']:.3g} {_esc(b['outcome'])} points), {robust}. Its effective sample size by the ELIR method is "
        f"{ess['map']['elir']:.0f} participants ({ess['robust']['elir']:.0f} for the robust prior the analysis uses), against "
        f"{ess['historical_total_n']:.0f} {_esc(control)} participants in the past trials. The prior, its settings and accuracy are in "
        f"<code>{_esc(b['file'])}</code>.</p>",
        f"<p><b>Drift</b> is the new trial's true {_esc(control)} mean change at week {w:g} minus the MAP mean, in {_esc(b['outcome'])} "
        f"points (column <code>drift</code>; <code>control_mean</code> is the true mean itself). At drift 0 the past trials predict the new "
        f"{_esc(control)} arm exactly and borrowing gains power. A negative drift (the new {_esc(control)} arm changes more in the direction of "
        f"benefit than the past trials predict) is pulled back toward the MAP mean, so the active arm looks better than it is and the type I "
        f"error rises; a positive drift does the reverse and costs power. The robust prior's vague component limits both once the conflict "
        f"is large. Each drift's trials are also analysed without borrowing (the same design and analysis, rows <code>borrowing = none</code>, "
        f"dashed lines), so the gain at drift 0 and the cost under conflict can be read off side by side. The other scenarios (assurance, "
        f"the effects without a drift) take the {_esc(control)} response from the parameter draws: {b['draws_control_mean']:.3g} on average, a "
        f"drift of {b['draws_drift']:+.3g}.</p>",
    ]
    if calibrated:
        text.append(f"<p>The thresholds are calibrated to a type I error of {calibrated['alpha']:g} under no drift ({calibrated['sims']} null trials "
                    "per design with the control arm at the MAP mean), each analysis its own threshold on the same trials; the drift rows give "
                    "the type I error under drift with those thresholds.</p>")
    return ["<h2>Borrowing a control arm from past trials</h2>", *text,
            _img(plot_drift(table, control, nominal), "type I error and power against drift, with and without borrowing"),
            _table_html(drift_table(table))]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #446}h2{border-bottom:1px solid #aab;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.8em}td,th{border:1px solid #ccd;padding:.2em .5em;text-align:right}
th{background:#eef}td:first-child,th:first-child{text-align:left}.settings td{text-align:left}
img{max-width:100%;height:auto;border:1px solid #ddd;margin:.4em 0}.wide{overflow-x:auto}
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table_html(df: pd.DataFrame, cls: str = "") -> str:
    def fmt(v):
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.4g}"
        return _esc(v)

    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_plan_html(table: pd.DataFrame, settings: list[tuple[str, str]], plot_png: bytes | None, smallest: pd.DataFrame | None = None,
                     title: str = "Trial plan: operating characteristics", control: str = "control", borrowing: dict | None = None) -> str:
    """The text of plan.html: the settings (label, value pairs), the operating-characteristic figure (plot_plan's
    PNG), with interim looks the expected_n and stop-probability figure, with a control prior (`borrowing`: plan.json's
    record) its section and the curves against drift, smallest n, and plan.csv as a table."""
    several = "arm" in table and "any" in set(table["arm"])
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{CSS}</style></head><body>',
        f"<h1>{_esc(title)}</h1>",
        "<h2>Settings</h2>",
        _table_html(pd.DataFrame(settings, columns=["setting", "value"]), "settings"),
        "<h2>Operating characteristics</h2>",
        "<p>Probability of success per design size and scenario: assurance (effects from the posterior or design prior), "
        "robust assurance, type I error (effect 0) and power at the stated effects; bands are +-2 Monte Carlo SEs.</p>",
        *(["<p>With several active arms each arm's success is its own comparison with " + _esc(control) + " (the table's rows per arm); the "
           "curves are those of at least one arm succeeding (rows <code>arm = any</code>), so at effect 0 (every arm equal to " + _esc(control)
           + ") the family-wise type I error, beside each arm's assurance.</p>"] if several else []),
        _img(plot_png, "probability of success against participants per arm"),
    ]
    interim_png = plot_interim(table, control)
    if interim_png is not None:
        per_arm = ("<p>Each active arm stops on its own: for efficacy, or dropped for futility, while the others continue; the table gives each "
                   "arm's stop probabilities and expected size (<code>expected_n_arm</code>; the control arm's <code>expected_n_control</code>). "
                   "The figure shows the trial's: ending at a look with an arm stopped for efficacy, or with every arm dropped.</p>") if several else ""
        parts += ["<h2>Interim looks</h2>",
                  "<p>Expected number enrolled and the probabilities of stopping early for efficacy or futility (over all looks), per scenario.</p>"
                  + per_arm,
                  _img(interim_png, "expected participants and stop probabilities against participants per arm")]
    if borrowing is not None:
        parts += _borrowing_html(table, borrowing, control)
    if smallest is not None and len(smallest):
        parts += ["<h2>Smallest n reaching the target assurance</h2>", _table_html(smallest)]
    parts += ["<h2>Table (plan.csv)</h2>", f'<div class="wide">{_table_html(table)}</div>', "</body></html>"]
    return "\n".join(parts) + "\n"
