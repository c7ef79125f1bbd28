"""Figures for the diagnostics (matplotlib, Agg backend): each function returns PNG bytes.

Plotting is a separate layer from the tables in convergence, ppc and loo: every figure here
draws a table or values those modules computed (the draws themselves for the rank and energy plots),
with plain matplotlib, each drawn once per run.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy import stats  # noqa: E402

from .convergence import ebfmi, scalar_draws  # noqa: E402
from .loo import PARETO_K_MAX, LooResult  # noqa: E402
from .ppc import INTERVAL_PROB, ObsIndex, replicated  # noqa: E402

SKIP_PREFIXES = ("participant_raw", "participant_effects", "marker_missing", "marker_censored", "marker_latent")
MAX_RANK_VARS = 6
RANK_COLUMNS = 4  # panels per row of the rank plot
LOO_PIT_BAND = 0.94  # the LOO-PIT figure's band: central interval of a uniform sample's ECDF difference


def to_png(fig, crop: bool = True) -> bytes:
    """The figure as PNG bytes, cropped to its content (crop=False for a figure laid out already: one drawing pass fewer)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight" if crop else None)
    plt.close(fig)
    return buf.getvalue()


def _margins(fig, left: float = 0.7, bottom: float = 0.55, right: float = 0.15, top: float = 0.4) -> None:
    """Fixed margins in inches around the axes (room for tick labels, axis labels and the title): the figure is laid
    out without measuring its text, and saved without cropping (`to_png(fig, crop=False)`), one drawing pass."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, bottom=bottom / height, right=1 - right / width, top=1 - top / height)


def _steps_post(x: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """The vertices of plt.step(x, h, where="post") for each row of `heights`: (rows, 2 len(x) - 1, 2)."""
    xs = np.repeat(x, 2)[1:]
    ys = np.repeat(heights, 2, axis=-1)[..., :-1]
    return np.stack(np.broadcast_arrays(xs, ys), axis=-1)


def population_vars(idata: az.InferenceData, limit: int = MAX_RANK_VARS) -> list[str]:
    """Population-level parameters worth a rank plot: small, not per participant or per observation."""
    out = []
    for name, var in idata.posterior.data_vars.items():
        extra = [d for d in var.dims if d not in ("chain", "draw")]
        if name.startswith(SKIP_PREFIXES) or name.endswith("__") or any(d in ("participant", "obs") for d in extra):
            continue
        if int(np.prod([var.sizes[d] for d in extra])) > 4 or float(var.std()) == 0:
            continue
        out.append(name)
    return out[:limit]


def rank_plot(idata: az.InferenceData, var_names: list[str] | None = None) -> bytes | None:
    """Rank plots of a few population parameters (None when the model has none small enough, e.g. an MMRM of many visits):
    per scalar, the histogram of each chain's ranks among all draws (average ranks over every chain), one row per chain,
    with ArviZ's number of bins (ceil(2 log2(draws)) + 1) and its dashed line at the uniform height."""
    names = var_names or population_vars(idata)
    if not names:
        return None
    draws, labels = scalar_draws(idata.posterior, names)
    chains, n_draw, n = draws.shape
    ranks = stats.rankdata(draws.reshape(chains * n_draw, n), axis=0).reshape(chains, n_draw, n)
    edges = np.linspace(0, chains * n_draw, int(np.ceil(2 * np.log2(n_draw)) + 1) + 1)
    gap = 2 / (chains * n_draw)  # one chain's row: uniform ranks have density 1 / (chains x draws), half a row
    ncol = min(RANK_COLUMNS, n)
    nrow = int(np.ceil(n / ncol))
    height = 0.6 + 1.7 * nrow
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.9 * ncol, height), squeeze=False)
    _margins(fig, left=0.55, bottom=0.45, right=0.1, top=0.6)
    fig.subplots_adjust(hspace=0.5, wspace=0.12)
    total = chains * n_draw
    xs = np.repeat(edges, 2)  # a histogram's outline: up and across each bin, down to the baseline at both ends
    for j, (ax, label) in enumerate(zip(axes.ravel(), labels)):
        outlines, means = [], []
        for c in range(chains):
            counts, _ = np.histogram(ranks[c, :, j], bins=edges)
            density = counts / (counts.sum() * np.diff(edges))
            outlines.append(np.column_stack([xs, np.concatenate([[c * gap], np.repeat(c * gap + density, 2), [c * gap]])]))
            means.append(c * gap + density.mean())
        # one filled shape per chain and one dashed line at its uniform height, in two collections (limits set, not measured)
        ax.add_collection(PolyCollection(outlines, facecolors=[f"C{c}" for c in range(chains)], edgecolors="none"), autolim=False)
        ax.hlines(means, 0, total, colors="k", linestyles="--", lw=0.8)
        ax.set_xlim(0, total)
        ax.set_ylim(0, max(o[:, 1].max() for o in outlines) * 1.05)
        # ticks only where they are labelled: the chains on the first column, the ranks on the lowest panel of each column
        ax.set_yticks(np.arange(chains) * gap, [str(c) for c in range(chains)], fontsize=7) if j % ncol == 0 else ax.set_yticks([])
        bottom = j + ncol >= n
        ax.set_xticks([0, total // 2, total]) if bottom else ax.set_xticks([])
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(label, fontsize=8, pad=3)
        if j % ncol == 0:
            ax.set_ylabel("chain", fontsize=8)
        if bottom:
            ax.set_xlabel("rank (all chains)", fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("Rank plots (uniform across chains when chains mix)", fontsize=10)
    return to_png(fig, crop=False)


def energy_plot(idata: az.InferenceData, bfmi: list[float] | None = None) -> bytes | None:
    """The marginal energy (centred) and the energy transitions (differences between successive draws) as densities,
    with each chain's E-BFMI (`bfmi`: the verdict's, else computed)."""
    if "energy" not in idata.sample_stats:
        return None
    energy = np.asarray(idata.sample_stats["energy"].transpose("chain", "draw").values, dtype=float)
    marginal, transition = (energy - energy.mean()).ravel(), np.diff(energy, axis=1).ravel()
    bfmi = list(ebfmi(idata)) if bfmi is None else bfmi
    fig, ax = plt.subplots(figsize=(6, 3.5))
    both = np.concatenate([marginal, transition])
    edges = np.histogram_bin_edges(both[np.isfinite(both)], bins=60)
    for values, color, label in ((marginal, "C0", "Marginal energy"), (transition, "C5", "Energy transition")):
        density, _ = np.histogram(values, bins=edges, density=True)
        ax.stairs(density, edges, fill=True, color=color, alpha=0.6, label=label)
    for c, b in enumerate(bfmi):
        ax.plot([], [], alpha=0, label=f"chain {c:>2} BFMI = {b:.2f}")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)
    ax.set_title("Energy: marginal vs transition (similar widths when E-BFMI is healthy)", fontsize=10)
    _margins(fig, left=0.1, bottom=0.1, right=0.1, top=0.35)
    return to_png(fig, crop=False)


def trajectory_plot(table: pd.DataFrame, outcome: str = "score") -> bytes:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (arm, sub) in enumerate(table.groupby("arm", sort=False)):
        color = f"C{i}"
        ax.fill_between(sub["week"], sub["rep_lo"], sub["rep_hi"], color=color, alpha=0.25, label=f"{arm}: replicated {INTERVAL_PROB:.0%}")
        ax.plot(sub["week"], sub["replicated_mean"], color=color, ls="--")
        ax.plot(sub["week"], sub["observed"], "o-", color=color, label=f"{arm}: observed")
    ax.set(xlabel="week", ylabel=f"mean {outcome}", title="Observed vs replicated mean trajectory by arm")
    ax.legend(fontsize=8)
    _margins(fig)
    return to_png(fig, crop=False)


def visit_distribution_plot(idata: az.InferenceData, index: ObsIndex, n_rep: int = 40, seed: int = 0, outcome: str = "score",
                            rep: np.ndarray | None = None) -> bytes:
    """Observed scores at each visit against `n_rep` replicated data sets (rep: `replicated(idata)` if at hand)."""
    rep = replicated(idata) if rep is None else rep
    rng = np.random.default_rng(seed)
    pick = rng.choice(rep.shape[0], size=min(n_rep, rep.shape[0]), replace=False)
    weeks = index.weeks
    ncol = min(4, len(weeks))
    nrow = int(np.ceil(len(weeks) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow), squeeze=False)
    q_lo, q_hi = np.quantile(rep[pick], [0.005, 0.995])
    lo, hi = min(np.nanmin(index.y), q_lo), max(np.nanmax(index.y), q_hi)
    bins = np.linspace(lo - (hi - lo) / 20, hi + (hi - lo) / 20, 25)
    # every panel has the same bins: the score axis is labelled on the lowest panel of each column only (ticks elsewhere
    # would repeat it), at the positions matplotlib's default locator picks for that range
    span = (bins[0], bins[-2])  # the steps start at each bin's left edge
    xlim = (span[0] - 0.05 * (span[1] - span[0]), span[1] + 0.05 * (span[1] - span[0]))
    ticks = [t for t in MaxNLocator("auto", steps=[1, 2, 2.5, 5, 10]).tick_values(*xlim) if xlim[0] <= t <= xlim[1]]
    for j, (ax, w) in enumerate(zip(axes.ravel(), weeks)):
        sel = index.week == w
        counts = np.array([np.histogram(rep[s, sel], bins=bins)[0] for s in pick], dtype=float)
        counts = counts[counts.sum(axis=1) > 0]
        # one collection of step lines (each drawn on its own, as separate lines would be: the overlaps darken)
        ax.add_collection(LineCollection(_steps_post(bins[:-1], counts / counts.sum(axis=1, keepdims=True) / np.diff(bins)),
                                         colors="C0", alpha=0.12, lw=0.8))
        h, _ = np.histogram(index.y[sel], bins=bins, density=True)
        ax.step(bins[:-1], h, where="post", color="k", lw=1.6)
        ax.set_title(f"week {int(w)} (n={int(sel.sum())})", fontsize=9)
        ax.set_yticks([])
        ax.set_xlim(*xlim)
        ax.set_xticks(ticks if j + ncol >= len(weeks) else [])
    for ax in axes.ravel()[len(weeks):]:
        ax.axis("off")
    fig.suptitle(f"{outcome} at each visit: observed (black) vs {len(pick)} replicated data sets (blue)", fontsize=10)
    _margins(fig, left=0.15, bottom=0.35, right=0.15, top=0.6)
    fig.subplots_adjust(hspace=0.4, wspace=0.06)
    return to_png(fig, crop=False)


def rates_plot(table: pd.DataFrame) -> bytes:
    stats = list(dict.fromkeys(table["statistic"]))
    fig, axes = plt.subplots(1, len(stats), figsize=(5 * len(stats), 3.6), squeeze=False)
    for ax, stat in zip(axes.ravel(), stats):
        sub = table[table["statistic"] == stat]
        n_arms = sub["arm"].nunique()
        for i, (arm, s) in enumerate(sub.groupby("arm", sort=False)):
            x = s["week"] + (i - (n_arms - 1) / 2) * 0.7 / max(n_arms, 2)
            ax.errorbar(x, s["replicated_mean"], yerr=[(s["replicated_mean"] - s["rep_lo"]).clip(lower=0), (s["rep_hi"] - s["replicated_mean"]).clip(lower=0)], fmt="s", color=f"C{i}", alpha=0.5, label=f"{arm}: replicated")
            ax.plot(x, s["observed"], "o", color=f"C{i}", mec="k", label=f"{arm}: observed")
        ax.set(xlabel="week", ylabel="rate", title=f"{stat} rate by arm")
        ax.legend(fontsize=7)
    _margins(fig)
    fig.subplots_adjust(wspace=0.25)
    return to_png(fig, crop=False)


def loo_pit_plot(pit) -> bytes:
    """The ECDF of the LOO-PIT values minus the uniform CDF, in the pointwise central LOO_PIT_BAND interval of that
    difference for a uniform sample of the same size (Beta quantiles of the order statistics), as az.plot_loo_pit(ecdf=True).
    pit: the LOO-PIT values (diagnostics.ppc.PPCResult.pit), or a fit to compute them from."""
    if not isinstance(pit, np.ndarray):
        from .ppc import loo_pit_values

        pit = loo_pit_values(pit)
    pit = np.sort(np.asarray(pit, dtype=float).ravel())
    n = pit.size
    ecdf = np.arange(n) / n
    grid = np.arange(n + 1)
    hi = stats.beta.ppf(0.5 + LOO_PIT_BAND / 2, grid + 1, n - grid + 1)
    lo = stats.beta.ppf(0.5 - LOO_PIT_BAND / 2, grid + 1, n - grid + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(np.hstack((0, pit, 1)), np.hstack((0, pit - ecdf, 0)), color="C0", lw=1.5, label="LOO-PIT ECDF", zorder=5)
    ax.fill_between(grid / n, hi - grid / n, lo - grid / n, color="C0", alpha=0.25, lw=0, label=f"{LOO_PIT_BAND:.0%} credible interval")
    ax.set_xlabel("y")
    ax.legend(fontsize=8)
    ax.set_title("LOO-PIT ECDF difference (inside the band when calibrated)", fontsize=10)
    _margins(fig, left=0.75)
    return to_png(fig, crop=False)


def pareto_k_plot(results: dict[str, LooResult]) -> bytes:
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for i, (name, r) in enumerate(results.items()):
        k = r.pareto_k
        ax.plot(np.arange(len(k)), k, ".", ms=3, color=f"C{i}", label=name)
    ax.axhline(PARETO_K_MAX, color="r", ls="--", lw=1, label=f"k = {PARETO_K_MAX}")
    level = next(iter(results.values())).level if results else ""
    ax.set(xlabel=level, ylabel="Pareto k", title=f"PSIS Pareto k per {level}")
    ax.legend(fontsize=7)
    _margins(fig)
    return to_png(fig, crop=False)


# ---------------------------------------------------------------- the answer first (diagnostics/summary.py)
def effects_forest_plot(answer, labels: tuple[str, ...]) -> bytes | None:
    """Each active arm - control difference at each reported week: mean and 94% HDI, with P(benefit) and
    P(benefit > MCID); one colour per active arm (labels: every arm, the control first)."""
    diff = answer.differences
    if diff.empty:
        return None
    n = len(diff)
    fig, ax = plt.subplots(figsize=(6.5, 1.4 + 0.75 * n))
    y = np.arange(n)[::-1]
    active = list(labels[1:])
    arms = diff["arm"] if "arm" in diff else pd.Series([""] * n)
    colors = [f"C{labels.index(a) if a in active else len(labels)}" for a in arms]  # each arm's colour in the trajectories
    # a line and a point: a skewed posterior's mean can lie outside its HDI
    ax.hlines(y, diff["lo"], diff["hi"], color=colors, lw=2)
    for color in dict.fromkeys(colors):  # the points of each arm
        mine = np.asarray(colors) == color
        ax.plot(diff["mean"].to_numpy()[mine], y[mine], "o", color=color, ms=7)
    ax.axvline(0, color="k", lw=1)
    if answer.mcid is not None:
        ax.axvline(-answer.mcid, color="C7", ls="--", lw=1.2, label=f"benefit = MCID ({answer.mcid:g} points)")
        ax.legend(fontsize=8, loc="best")
    prefix = f"{labels[1]} - {labels[0]} " if len(active) == 1 else None  # several arms: each row names its own
    names = []
    for r in diff.itertuples(index=False):
        probs = f"P(benefit) {r.p_benefit:.2f}" + (f", P(> MCID) {r.p_mcid:.2f}" if pd.notna(r.p_mcid) else "")
        names.append(f"{r.quantity.removeprefix(prefix) if prefix else r.quantity}\n{probs}")
    ax.set_yticks(y, names, fontsize=9)
    ax.set_ylim(-0.7, n - 0.3)
    if len(active) == 1:
        ax.set(xlabel=f"{labels[1]} - {labels[0]}, points (below 0 favours {labels[1]}); 94% HDI",
               title=f"{answer.model}: treatment effect by week")
    else:
        ax.set(xlabel=f"active arm - {labels[0]}, points (below 0 favours the active arm); 94% HDI",
               title=f"{answer.model}: effect of each active arm by week")
    return to_png(fig)


def contrasts_forest_plot(answer) -> bytes | None:
    """Every contrast of the model's contrasts.csv at every visit (each active arm - control, the contrasts asked for;
    the dose trend in its own panel, in points per dose unit): mean and 94% HDI, one colour per contrast."""
    table = getattr(answer, "contrasts", None)
    if table is None or table.empty:
        return None
    lo, hi = [c for c in table.columns if c.startswith("hdi_")][:2]
    points = table[table["kind"].isin(["vs_control", "contrast"])]
    trend = table[table["kind"] == "dose_trend"]
    if points.empty:
        return None
    panels = [(points, "points")] + ([(trend, "per dose unit")] if len(trend) else [])
    heights = [len(p) for p, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 1.2 * len(panels) + 0.24 * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    arms = list(table.loc[table["kind"] == "arm_mean", "contrast"].drop_duplicates())  # control first
    others = list(dict.fromkeys(table.loc[table["kind"].isin(["contrast", "dose_trend"]), "contrast"]))
    for ax, (sub, unit) in zip(axes.ravel(), panels):
        y = np.arange(len(sub))[::-1]
        # an arm vs control in the arm's colour (as in the trajectories), every other contrast in its own
        colors = [f"C{arms.index(c.split(' - ')[0]) % 10}" if k == "vs_control" and c.split(" - ")[0] in arms
                  else f"C{(len(arms) + others.index(c)) % 10}" for k, c in zip(sub["kind"], sub["contrast"])]
        ax.hlines(y, sub[lo], sub[hi], color=colors, lw=1.8)
        for color in dict.fromkeys(colors):  # the points of each contrast
            mine = np.asarray(colors) == color
            ax.plot(sub["mean"].to_numpy()[mine], y[mine], "o", color=color, ms=4.5)
        ax.axvline(0, color="k", lw=1)
        ax.set_yticks(y, [f"{c}, week {int(w)}" for c, w in zip(sub["contrast"], sub["week"])], fontsize=7)
        ax.set_ylim(-0.7, len(sub) - 0.3)
        favours = "higher doses do better" if unit == "per dose unit" else "favours the arms added"
        ax.set_xlabel(f"{sub['unit'].iloc[0]} (below 0: {favours}); 94% HDI", fontsize=8)
    axes.ravel()[0].set_title(f"{answer.model}: contrasts at every visit")
    fig.tight_layout()
    return to_png(fig)


def fitted_trajectory_plot(answer, observed: pd.DataFrame | None, outcome: str = "score") -> bytes | None:
    """The model's mean score by arm (94% HDI bands) against the observed means at each visit."""
    traj = answer.trajectory
    if traj is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    arms = list(dict.fromkeys(observed["arm"])) if observed is not None else []
    for arm, sub in traj.groupby("arm", sort=False):
        color = f"C{arms.index(arm)}" if arm in arms else "C7"
        ax.fill_between(sub["week"], sub["lo"], sub["hi"], color=color, alpha=0.2)
        ax.plot(sub["week"], sub["mean"], "-", color=color, label=f"{arm}: fitted mean")
    for i, arm in enumerate(arms):
        seen = observed[observed["arm"] == arm]
        ax.plot(seen["week"], seen["mean"], "o", color=f"C{i}", mec="k", label=f"{arm}: observed mean")
    ax.set(xlabel="week", ylabel=f"mean {outcome}", title=f"{answer.model}: fitted mean trajectory by arm")
    ax.legend(fontsize=7)
    _margins(fig)
    return to_png(fig, crop=False)


def marker_forest_plot(answer) -> bytes | None:
    """The biomarker rows of a model's estimates, one panel per unit (a ratio's reference is 1, a difference's 0)."""
    marks = answer.markers
    if marks is None:
        return None
    # one panel per kind of unit: 'MADRS points per doubling (pg/mL)' and '... (mg/L)' share an axis (per doubling is unit-free)
    marks = marks.assign(unit=marks["unit"].str.replace(r"\s*\([^)]*\)$", "", regex=True))
    units = list(dict.fromkeys(marks["unit"]))
    heights = [len(marks[marks["unit"] == u]) for u in units]
    fig, axes = plt.subplots(len(units), 1, figsize=(8, 0.9 * len(units) + 0.42 * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, unit in zip(axes.ravel(), units):
        sub = marks[marks["unit"] == unit]
        y = np.arange(len(sub))[::-1]
        # the interval as a line and the mean as a point: the mean of a skewed posterior (a ratio) can lie outside its HDI
        ax.hlines(y, sub["lo"], sub["hi"], color="C1", lw=1.5)
        ax.plot(sub["mean"], y, "o", color="C1")
        ax.axvline(1.0 if "ratio" in unit.lower() else 0.0, color="k", lw=1)
        ax.set_yticks(y, [q if len(q) <= 60 else q[:57] + "..." for q in sub["quantity"]], fontsize=8)
        ax.set_xlabel(f"{unit}, 94% HDI", fontsize=8)
    axes.ravel()[0].set_title(f"{answer.model}: biomarker effects")
    fig.tight_layout()
    return to_png(fig)
