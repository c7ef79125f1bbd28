"""Model comparison by expected log predictive density: an `az.compare`-style table.

Columns: rank, elpd, se, elpd_diff (to the best), dse (SE of the difference, from the paired
pointwise differences), weight (stacking: the mixture of predictive distributions that maximises
the leave-one-out log score), p_loo, method (how the elpd was estimated) and reliable (no unit left
with Pareto k above the threshold). Models fitted to different observations are refused: an elpd
is only comparable on the same data.

The plain-language line calls a difference clear when |elpd_diff| > CLEAR_DIFF_SE x dse.
"""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import softmax

from .loo import LooResult

CLEAR_DIFF_SE = 2.0  # a difference in elpd is called clear when larger than this many SEs of the difference


class ComparisonError(ValueError):
    """The models cannot be compared (fitted to different observations)."""


def observation_signature(idata: az.InferenceData) -> dict:
    """What makes two fits comparable: the observed outcome values, their mapping and the data checksum."""
    sig = {"checksum": str(idata.posterior.attrs.get("data_checksum", ""))}
    ll = idata.log_likelihood if "log_likelihood" in idata.groups() else {}
    if "y_participant" in ll and "y_visit" in ll:  # the integrated densities: post-baseline scores given the baseline
        sig["scored"] = (tuple(map(str, ll["y_participant"]["scored_participant"].values)), tuple(map(int, ll["y_visit"]["scored_visit"].values)))
    if "observed_data" not in idata.groups() or "y" not in idata.observed_data:
        sig["y"] = None
        return sig
    y = idata.observed_data["y"]
    sig["y"] = np.asarray(y.values, dtype=float)
    sig["dims"] = tuple(y.dims)
    const = idata.constant_data if "constant_data" in idata.groups() else {}
    for name in ("obs_participant", "obs_week"):
        sig[name] = np.asarray(const[name].values) if name in const else None
    return sig


def mismatch(a: dict, b: dict) -> str | None:
    """Why two observation signatures differ (None when the same).

    Fits with the integrated densities on the same units of the same data are comparable whatever their
    outcome variable (an MMRM of change scores and a trajectory model of the scores)."""
    if a.get("scored") is not None and a.get("scored") == b.get("scored") and a["checksum"] == b["checksum"]:
        return None
    if a["y"] is None or b["y"] is None:
        return "no observed outcome 'y' recorded"
    if a["checksum"] != b["checksum"]:
        return "fitted to different data files (data checksums differ)"
    if a["dims"] != b["dims"] or a["y"].shape != b["y"].shape or not np.array_equal(a["y"], b["y"], equal_nan=True):
        return "different observed outcome values (e.g. change scores instead of scores, or other rows)"
    for name in ("obs_participant", "obs_week"):
        if a.get(name) is None or b.get(name) is None or not np.array_equal(a[name], b[name]):
            return f"observations mapped differently ({name})"
    return None


def check_comparable(idatas: dict[str, az.InferenceData]) -> None:
    """Raise ComparisonError unless every fit has the same observations as the first."""
    names = list(idatas)
    ref = observation_signature(idatas[names[0]])
    problems = [f"'{n}': {why}" for n in names[1:] if (why := mismatch(ref, observation_signature(idatas[n])))]
    if problems:
        raise ComparisonError(f"cannot compare models fitted to different observations than '{names[0]}': " + "; ".join(problems))


def comparable_groups(idatas: dict[str, az.InferenceData]) -> list[list[str]]:
    """Partition fits into groups with identical observations (order of first appearance)."""
    groups: list[tuple[dict, list[str]]] = []
    for name, idata in idatas.items():
        sig = observation_signature(idata)
        for ref, members in groups:
            if mismatch(ref, sig) is None:
                members.append(name)
                break
        else:
            groups.append((sig, [name]))
    return [members for _, members in groups]


def stacking_weights(elpd_matrix: np.ndarray) -> np.ndarray:
    """Weights w on the simplex maximising sum_i log sum_k w_k exp(elpd_ik) (Yao et al. 2018)."""
    n, k = elpd_matrix.shape
    if k == 1:
        return np.ones(1)
    shift = elpd_matrix.max(axis=1, keepdims=True)
    dens = np.exp(elpd_matrix - shift)

    def objective(z):
        w = softmax(np.append(z, 0.0))
        return -np.sum(np.log(dens @ w + 1e-300))

    best = minimize(objective, np.zeros(k - 1), method="BFGS")
    return softmax(np.append(best.x, 0.0))


def compare(results: dict[str, LooResult]) -> pd.DataFrame:
    """Rank models by elpd (best first). All results must be at the same level over the same units."""
    names = list(results)
    if not names:
        raise ComparisonError("no models to compare")
    first = results[names[0]]
    for n in names[1:]:
        r = results[n]
        if r.level != first.level or len(r.units) != len(first.units) or not np.array_equal(np.asarray(r.units, dtype=str), np.asarray(first.units, dtype=str)):
            raise ComparisonError(f"'{n}' was scored on different {first.level}s than '{names[0]}': compare models fitted to the same observations")
    matrix = np.column_stack([results[n].elpd_i for n in names])
    weights = stacking_weights(matrix)
    order = np.argsort([-results[n].elpd for n in names], kind="stable")
    best = names[order[0]]
    rows = []
    for rank, j in enumerate(order):
        n = names[j]
        r = results[n]
        diff = results[best].elpd_i - r.elpd_i
        methods = sorted(set(r.method))
        rows.append(
            {
                "model": n,
                "rank": rank,
                "elpd": r.elpd,
                "se": r.se,
                "elpd_diff": float(diff.sum()),
                "dse": float(np.sqrt(len(diff) * np.var(diff))),
                "weight": float(weights[j]),
                "p_loo": r.p_loo,
                "method": "+".join(methods),
                "reliable": bool(r.reliable),
                "n_units": len(r.elpd_i),
            }
        )
    table = pd.DataFrame(rows).set_index("model")
    table.attrs["level"] = first.level
    return table


def plain_language(table: pd.DataFrame, level: str | None = None) -> str:
    """One sentence: which model predicts best and by how much relative to the SE of the difference."""
    level = level or table.attrs.get("level", "")
    unit = {"participant": "new participants (leave-one-participant-out)", "visit": "new visits of known participants (pointwise LOO)"}.get(level, level)
    if len(table) == 1:
        return f"Only '{table.index[0]}' was fitted: nothing to compare (elpd {table['elpd'].iloc[0]:.1f}, SE {table['se'].iloc[0]:.1f})."
    best, second = table.index[0], table.index[1]
    d, se = float(table["elpd_diff"].iloc[1]), float(table["dse"].iloc[1])
    ratio = d / se if se > 0 else float("inf")
    if ratio > CLEAR_DIFF_SE:
        verdict = f"clearly preferred: its elpd is {d:.1f} higher than the next best '{second}', {ratio:.1f} times the SE of the difference ({se:.1f})"
    else:
        verdict = (
            f"ranked first, but not clearly better than '{second}': the elpd difference {d:.1f} is {ratio:.1f} times its SE ({se:.1f}), "
            f"within {CLEAR_DIFF_SE:g} SE, so the data do not separate them"
        )
    text = f"For predicting {unit}, '{best}' is {verdict}; stacking weight {table['weight'].iloc[0]:.2f}."
    unreliable = [m for m in table.index if not table.loc[m, "reliable"]]
    if unreliable:
        text += f" Caution: elpd of {', '.join(unreliable)} rests on Pareto k above the threshold."
    return text


def comparison_json(table: pd.DataFrame) -> str:
    return json.dumps({"level": table.attrs.get("level"), "rows": table.reset_index().to_dict(orient="records")}, indent=2, default=str)
