"""Plot of assurance (plain and robust), power and type I error against sample size, with MCSE bands, and the
self-contained HTML page plan.html (figures as base64 PNGs; presentation layer only, it computes nothing).

A two-arm table's curves are its arm's; with several active arms the curves are those of "at least one
arm" (the table's "any" rows: family-wise type I error at effect 0), with each arm's assurance beside them."""

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
                     title: str = "Trial plan: operating characteristics", control: str = "control") -> str:
    """The text of plan.html: the settings (label, value pairs), the operating-characteristic figure (plot_plan's
    PNG), with interim looks the expected_n and stop-probability figure, smallest n, and plan.csv as a table."""
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
    if smallest is not None and len(smallest):
        parts += ["<h2>Smallest n reaching the target assurance</h2>", _table_html(smallest)]
    parts += ["<h2>Table (plan.csv)</h2>", f'<div class="wide">{_table_html(table)}</div>', "</body></html>"]
    return "\n".join(parts) + "\n"
