"""Plot of assurance (plain and robust), power and type I error against sample size, with MCSE bands (plotting layer only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_plan(table: pd.DataFrame, path: str | Path, target: float | None = None, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pops = list(dict.fromkeys(table["population"]))
    fig, axes = plt.subplots(1, len(pops), figsize=(5.5 * len(pops), 4.2), sharey=True, squeeze=False)
    for ax, pop in zip(axes[0], pops):
        part = table[(table["population"] == pop) & (table["scenario"] != "vague")]
        for scen, rows in part.groupby("scenario", sort=False):
            rows = rows.sort_values("n_per_arm")
            x, p, m = rows["n_per_arm"], rows["p_success"], rows["p_success_mcse"]
            style = "-" if scen == "assurance" else (":" if scen == "effect=0" else "--")
            label = "assurance" if scen == "assurance" else ("type I error (effect 0)" if scen == "effect=0" else f"power, {scen}")
            (line,) = ax.plot(x, p, style, marker="o", ms=3, label=label)
            ax.fill_between(x, (p - 2 * m).clip(0, 1), (p + 2 * m).clip(0, 1), color=line.get_color(), alpha=0.2, lw=0)
            if scen == "assurance" and "robust_weight" in rows and rows["robust_weight"].iloc[0] > 0:
                r = rows["assurance_robust"]
                ax.plot(x, r, "-", color=line.get_color(), alpha=0.55, lw=2.5, label=f"robust assurance (weight {rows['robust_weight'].iloc[0]:g} vague)")
        if target is not None:
            ax.axhline(target, color="grey", lw=0.8, ls="-.", label=f"target {target:g}")
        ax.set_title(f"population: {pop}")
        ax.set_xlabel("participants per arm (placebo)")
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
