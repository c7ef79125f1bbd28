"""Run a planning grid in chunks: in this process, on a local Dask cluster, or on any Dask scheduler.

Work is cut into chunks of at most `chunk_size` simulated trials per (design, scenario). Chunk c of
scenario j draws its random numbers from SeedSequence(seed, spawn_key=(j, c)): the numbers depend on
the seed and the chunk's position only, never on which worker runs it or how many there are, and
results are summed in chunk order, so the same seed gives the same table on 1 process, 2 local
workers or a remote cluster. Designs share the chunk seeds (common random numbers), which makes
differences between designs (sample sizes, enrichment) less noisy without biasing any of them.

Robust assurance: with weight w on a vague component, the design prior is the mixture
(1 - w) x (the posterior's effects) + w x Normal(0, sd), so its assurance is the same mixture of the
assurance and of the success rate of the "vague" scenario (effects drawn from Normal(0, sd), nuisance
parameters from the posterior): assurance_robust = (1 - w) assurance + w P(success | vague).

The table has a row per design, scenario and active arm (column `arm`): the arm's success (its
difference from control passes the decision rule), its estimate's bias and interval width, its planned
and expected size; a design with several active arms also has a row `arm` = "any": the success of at
least one arm (the family's; at effect 0 the family-wise type I error), with the columns that describe
the trial as a whole (and NaN for those of one arm's estimate). A two-arm design has no "any" row: at
least one arm succeeding is its arm succeeding, so its rows are the arm's.

Interim looks (`PlanSpec.interim`, planning/interim.py): each arm's decision is the sequential one
(success = stopped for efficacy at a look or succeeded at the final analysis; the posterior summaries are
those of the analysis that ended the arm), with the probabilities of stopping per look and overall (for
the "any" row: the trial ending at a look, with an arm stopped for efficacy or with every arm dropped),
the expected number enrolled (in all, in the control arm, in the row's arm) and the expected duration.

Calibrated thresholds (`PlanSpec.calibration`, planning/calibration.py): before the grid runs, each
design's thresholds (common to its arms) are calibrated on global-null trials of their own (chunks
seeded from SeedSequence(seed, spawn_key=(calibration.STREAM, chunk)), so again independent of the
workers) to a family-wise type I error, and the grid then runs with each design's thresholds; the table
states them.

Borrowing a control arm (`AnalysisSettings.control_prior`, a MAP prior; planning/analysis.py): every scenario is
analysed with it. Drift scenarios (`Scenario.control_mean`, `drift`) set the control arm's true mean change at the
primary week to the MAP mean plus the drift (planning/simulate.py); they share one seed stream (`DRIFT_STREAM`), so
every drift and effect is simulated on the same random numbers (common random numbers: the curves against drift
are smooth and their differences carry little Monte Carlo noise), and each drift scenario's trials are also
analysed without borrowing (the analysis with the analysis' own priors only): the table has a row per design,
drift scenario and arm for each, `borrowing` = "map" and "none", beside `drift` and `control_mean` (NaN on the rows
of the other scenarios, which take the control arm from the parameter draws). Calibration with a control prior
(`calibration_scenario`: the null at drift 0, the control arm at the MAP mean) calibrates both analyses' thresholds
on the same null trials, each to the same alpha (`reference_thresholds` for the analysis without borrowing), so
their power is compared at the same type I error under no drift; the drift rows then show each one's type I error
under drift with that threshold.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .analysis import analyse
from .calibration import STREAM, CalibrationSettings, Thresholds, choose_thresholds, final_probabilities, stage_probabilities
from .design import AnalysisSettings, InterimSettings, PlannedTrial, Scenario
from .interim import look_information, look_weeks, sequential
from .params import ParameterSet, PlanningError
from .simulate import simulate_trials

DRIFT_STREAM = 1 << 21  # the drift scenarios' one seed stream: SeedSequence(seed, spawn_key=(DRIFT_STREAM, chunk))


@dataclass(frozen=True)
class Chunk:
    design: int
    scenario: int
    index: int
    n_sims: int


@dataclass
class PlanSpec:
    """Everything one planning run needs besides the parameter draws."""

    designs: list[PlannedTrial]
    scenarios: list[Scenario]
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    sims: int = 1000
    seed: int = 1
    chunk_size: int = 250
    effect_scale: float = 1.0
    round_scores: bool = True
    robust_weight: float = 0.0  # weight of the vague component (needs a "vague" scenario when > 0)
    interim: InterimSettings | None = None  # interim looks (planning/interim.py); None: the final analysis only
    calibration: CalibrationSettings | None = None  # calibrate each design's thresholds to a type I error
    thresholds: tuple[Thresholds, ...] | None = None  # per design (set by `plan` when calibrating)
    calibration_scenario: Scenario = field(default_factory=lambda: Scenario("fixed", 0.0))  # the null the calibration simulates
    reference_thresholds: tuple[Thresholds, ...] | None = None  # per design, the analysis without borrowing's (with a control prior)

    @property
    def borrowing(self) -> bool:
        """Whether the analysis puts a prior on the control arm (planning/analysis.py)."""
        return self.analysis.control_prior is not None

    def with_arms(self, params: ParameterSet) -> PlanSpec:
        """The spec with every design naming the parameter set's arms (PlannedTrial.with_arms)."""
        return replace(self, designs=[d.with_arms(params) for d in self.designs])

    def rules(self, design: int) -> tuple[AnalysisSettings, InterimSettings | None]:
        """The analysis settings and interim rules of design `design`, with its own thresholds if calibrated."""
        if self.thresholds is None:
            return self.analysis, self.interim
        t = self.thresholds[design]
        interim = None if self.interim is None else replace(self.interim, efficacy=t.efficacy)
        analysis = replace(self.analysis, threshold=t.final)
        if self.reference_thresholds is not None:
            analysis = replace(analysis, reference_threshold=self.reference_thresholds[design].final)
        return analysis, interim

    def design_thresholds(self, design: int, reference: bool = False) -> Thresholds:
        """The design's thresholds (`reference`: those of the analysis without borrowing)."""
        if reference:
            if self.reference_thresholds is not None:
                return self.reference_thresholds[design]
            return Thresholds(self.analysis.without_borrowing().threshold)
        if self.thresholds is not None:
            return self.thresholds[design]
        return Thresholds(self.analysis.threshold, None if self.interim is None else self.interim.efficacy)

    def seed_key(self, scenario: int) -> int:
        """The first spawn key of a scenario's chunks: its stream if it has one, else its position."""
        stream = self.scenarios[scenario].stream if scenario >= 0 else None
        return scenario if stream is None else stream

    def calibration_chunks(self) -> list[Chunk]:
        """Chunks of each design's null trials (scenario -1: the calibration's own, seeded from calibration.STREAM)."""
        n_chunks = math.ceil(self.calibration.sims / self.chunk_size)
        return [Chunk(d, -1, c, min(self.chunk_size, self.calibration.sims - c * self.chunk_size)) for d in range(len(self.designs)) for c in range(n_chunks)]

    def chunks(self) -> list[Chunk]:
        n_chunks = math.ceil(self.sims / self.chunk_size)
        out = []
        for d in range(len(self.designs)):
            for j in range(len(self.scenarios)):
                for c in range(n_chunks):
                    out.append(Chunk(d, j, c, min(self.chunk_size, self.sims - c * self.chunk_size)))
        return out

    def validate(self, params: ParameterSet) -> None:
        if self.sims < 1:
            raise PlanningError(f"--sims must be at least 1, got {self.sims}")
        if self.chunk_size < 1:
            raise PlanningError(f"the chunk size must be at least 1, got {self.chunk_size}")
        if not self.effect_scale >= 0:
            raise PlanningError(f"--effect-scale must be >= 0, got {self.effect_scale}")
        if not self.designs:
            raise PlanningError("no designs to simulate")
        if not 0 <= self.robust_weight < 1:
            raise PlanningError(f"--robust-weight must be in [0, 1), got {self.robust_weight}")
        if self.robust_weight > 0 and not any(sc.kind == "vague" for sc in self.scenarios):
            raise PlanningError("a robust weight needs the vague scenario (Scenario('vague', sd=...))")
        for sc in self.scenarios:
            if sc.kind == "vague" and not (sc.sd is not None and sc.sd > 0):
                raise PlanningError(f"the vague component's SD must be positive, got {sc.sd}")
        self.analysis.validate()
        if self.interim is not None:
            self.interim.validate()
        if self.calibration is not None:
            self.calibration.validate()
        for design in self.designs:
            design.validate(params)
            if self.interim is not None:
                self.interim.check_design(design)
        drifts = any(sc.control_mean is not None for sc in [*self.scenarios, self.calibration_scenario])
        if self.borrowing and self.interim is not None:
            raise PlanningError("interim looks are not available with a control prior (--historical-control): the predictive probability of "
                                "success assumes a normal posterior; plan the looks without borrowing")
        if drifts and any(d.enrich_marker is not None for d in self.designs):
            raise PlanningError("drift scenarios (--historical-control) cannot be simulated for enriched designs (--enrich): the enriched "
                                "population's control response depends on the marker; plan them in a run without --historical-control")
        for sc in self.scenarios:
            if sc.control_mean is not None and not np.isfinite(sc.control_mean):
                raise PlanningError(f"scenario '{sc.label}': the control mean must be finite, got {sc.control_mean}")


def run_chunk(params: ParameterSet, spec: PlanSpec, chunk: Chunk) -> dict:
    """Simulate and analyse one chunk; return sums (not means) so chunks add up exactly in order: per
    active arm (`arms`), for "at least one arm" (`any`) and for the trial (`trial`)."""
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(spec.seed_key(chunk.scenario), chunk.index)))
    scenario = spec.scenarios[chunk.scenario]
    sim = simulate_trials(params, spec.designs[chunk.design], scenario, chunk.n_sims, rng, spec.effect_scale, spec.round_scores)
    design = spec.designs[chunk.design]
    analysis, interim = spec.rules(chunk.design)
    res = analyse(sim, analysis) if interim is None else sequential(sim, design, analysis, interim)
    looks = 0 if spec.interim is None else spec.interim.n_looks
    arms, anyone, trial = _chunk_sums(res, sim, looks)
    out = {"design": chunk.design, "scenario": chunk.scenario, "index": chunk.index, "n": chunk.n_sims, "arms": arms, "any": anyone, "trial": trial}
    if "reference" in res and scenario.control_mean is not None:  # the same trials analysed without borrowing
        out["arms_reference"], out["any_reference"], _ = _chunk_sums({**res, **res["reference"]}, sim, looks)
    return out


def _chunk_sums(res: dict, sim, looks: int) -> tuple[list[dict], dict, dict]:
    """A chunk's sums per active arm, for "at least one arm" and for the trial, from its analysis results."""
    width = np.where(np.isfinite(res["width"]), res["width"], np.nan)
    ok = res["ok"]
    err = np.where(ok, res["estimate"] - res["true_effect"], 0.0)
    lost = ~sim.completed
    arms = []
    for a in range(sim.n_active):
        row = {
            "success": int(res["success"][:, a].sum()),
            "width_sum": float(np.nansum(width[:, a])),
            "width_sq": float(np.nansum(width[:, a] ** 2)),
            "width_n": int(np.isfinite(width[:, a]).sum()),
            "p_benefit_sum": float(res["p_benefit"][:, a].sum()),
            "true_effect_sum": float(res["true_effect"][:, a].sum()),
            "completers_sum": float(res["completers"][:, a].sum()),
            "ok": int(ok[:, a].sum()),
            "error_sum": float(err[:, a].sum()),
            "error_sq": float((err[:, a] ** 2).sum()),
        }
        if looks:
            row.update(
                stop_efficacy=[int((res["stop_efficacy"][:, a] & (res["stop_look"][:, a] == k)).sum()) for k in range(1, looks + 1)],
                stop_futility=[int((res["stop_futility"][:, a] & (res["stop_look"][:, a] == k)).sum()) for k in range(1, looks + 1)],
                enrolled_sum=float(res["enrolled_arm"][:, a + 1].sum()),
                duration_sum=float(res["duration"][:, a].sum()),
            )
        arms.append(row)
    trial = {
        "screened_per_enrolled_sum": float((1.0 / res["eligible"]).sum()),
        "lost_sum": [float(lost[:, sim.arm == k].mean(axis=1).sum()) for k in range(sim.n_active + 1)],
        "site_sd_sum": 0.0 if sim.site_sd is None else float(sim.site_sd.sum()),
    }
    anyone = {"success": int(res["success"].any(axis=1).sum()), "ok": int(ok.all(axis=1).sum()),
              "completers_sum": float((~lost).sum() if looks == 0 else res["trial_completers"].sum())}
    if looks:
        trial.update(enrolled_sum=float(res["enrolled"].sum()), screened_sum=float((res["enrolled"] / res["eligible"]).sum()),
                     control_sum=float(res["enrolled_arm"][:, 0].sum()), duration_sum=float(res["trial_duration"].sum()))
        ended, eff = res["trial_stop_look"], res["trial_stop_efficacy"]
        anyone.update(
            stop_efficacy=[int((eff & (ended == k)).sum()) for k in range(1, looks + 1)],
            stop_futility=[int((~eff & (ended == k)).sum()) for k in range(1, looks + 1)],
            enrolled_sum=float(res["enrolled_arm"][:, 1:].sum()),
            duration_sum=trial["duration_sum"],
        )
    return arms, anyone, trial


def run_calibration_chunk(params: ParameterSet, spec: PlanSpec, chunk: Chunk) -> dict:
    """Simulate one chunk of null trials of a design and return their stage probabilities (planning/calibration.py)."""
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=(STREAM, chunk.index)))
    design = spec.designs[chunk.design]
    sim = simulate_trials(params, design, spec.calibration_scenario, chunk.n_sims, rng, spec.effect_scale, spec.round_scores)
    out = {"design": chunk.design, "index": chunk.index}
    if spec.borrowing:  # both analyses on the same null trials (no looks with a control prior)
        res = analyse(sim, spec.analysis)
        out["q"] = final_probabilities(res, spec.analysis)
        out["q_reference"] = final_probabilities({**res, **res["reference"]}, spec.analysis)
    else:
        out["q"] = stage_probabilities(sim, design, spec.analysis, spec.interim)
    return out


def local_cluster(workers: int):
    """A Dask LocalCluster of `workers` single-threaded processes for the planning chunks.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes the C allocator hand back
    every freed block above 64 kB; each simulated chunk allocates and frees many such temporaries, and
    with it a worker runs 2-3 times slower than the same chunks in one process. The workers here keep
    the allocator's default (the nanny's other settings, one BLAS thread per worker, are kept)."""
    import dask
    from dask.distributed import LocalCluster

    env = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}).items() if k != "MALLOC_TRIM_THRESHOLD_"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40)  # ":0": any free port (None still binds 8787)


@contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None, client=None):
    """The Dask client to run chunks on: `client` as given, a Client of `scheduler`, a LocalCluster of
    `workers` single-threaded processes, or None (this process) when workers <= 1 and neither is given."""
    if client is not None or (scheduler is None and workers <= 1):
        yield client
        return
    from dask.distributed import Client

    own_cluster = None
    if scheduler is not None:
        try:
            own_client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise PlanningError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
    else:
        own_cluster = local_cluster(workers)
        own_client = Client(own_cluster)
    try:
        yield own_client
    finally:
        own_client.close()
        if own_cluster is not None:
            own_cluster.close()


def map_chunks(fn, params: ParameterSet, spec: PlanSpec, chunks: list[Chunk], client=None) -> list[dict]:
    """fn(params, spec, chunk) for every chunk, in this process (client None) or on the Dask client."""
    if client is None:
        return [fn(params, spec, c) for c in chunks]
    # hash=False: unique keys, so the calibration's and the grid's scatters of the same objects cannot
    # release each other's data
    params_f = client.scatter(params, broadcast=True, hash=False)
    spec_f = client.scatter(spec, broadcast=True, hash=False)
    futures = [client.submit(fn, params_f, spec_f, c, pure=False) for c in chunks]
    return client.gather(futures)


def execute(params: ParameterSet, spec: PlanSpec, workers: int = 1, scheduler: str | None = None, client=None) -> list[dict]:
    """Run every chunk; `client` (a dask.distributed Client) or `scheduler` (its address) or `workers`
    (a LocalCluster of that many single-threaded processes; 1 = this process, no Dask)."""
    spec = spec.with_arms(params)
    with dask_client(workers, scheduler, client) as cl:
        return map_chunks(run_chunk, params, spec, spec.chunks(), cl)


def calibrate(params: ParameterSet, spec: PlanSpec, client=None) -> tuple[tuple[Thresholds, ...], tuple[Thresholds, ...] | None]:
    """Each design's calibrated thresholds (planning/calibration.py), the null trials' stage probabilities
    gathered in chunk order; with a control prior also the analysis without borrowing's (else None)."""
    results = sorted(map_chunks(run_calibration_chunk, params, spec, spec.calibration_chunks(), client), key=lambda r: (r["design"], r["index"]))
    keys = ("q", "q_reference") if spec.borrowing else ("q",)
    out = {k: [] for k in keys}
    for d, design in enumerate(spec.designs):
        for key in keys:
            q = np.concatenate([r[key] for r in results if r["design"] == d]).max(axis=1)  # the family's stage maxima over the arms
            try:
                out[key].append(choose_thresholds(q, spec.calibration, None if spec.interim is None else spec.interim.efficacy))
            except PlanningError as exc:
                raise PlanningError(f"{design.n_control} per arm ({design.population}): {exc}") from None
    return tuple(out["q"]), (tuple(out["q_reference"]) if spec.borrowing else None)


def _sum(part: list[dict], group: str, key: str, arm: int | None = None):
    """A chunk quantity summed in chunk order (element by element for per-look lists)."""
    values = [(r[group][arm] if arm is not None else r[group])[key] for r in part]
    if isinstance(values[0], list):
        return [sum(v[k] for v in values) for k in range(len(values[0]))]
    return sum(values)


def summarise(spec: PlanSpec, results: list[dict]) -> pd.DataFrame:
    """One row per (design, scenario, active arm), and with several active arms one for "any" (module
    docstring): success rate with binomial MCSE, interval width with its MCSE, bias of the analysis'
    estimate, realised dropout; per design, plain and robust assurance."""
    results = sorted(results, key=lambda r: (r["design"], r["scenario"], r["index"]))
    rows = []
    keys = sorted({(r["design"], r["scenario"]) for r in results})
    for d, j in keys:
        part = [r for r in results if r["design"] == d and r["scenario"] == j]
        design, scen = spec.designs[d], spec.scenarios[j]
        a_n = design.n_active
        n = sum(r["n"] for r in part)
        lost = [x / n for x in _sum(part, "trial", "lost_sum")]
        sizes, rates = design.arm_sizes, design.dropout_rates
        trial_cols = {
            "expected_n": _sum(part, "trial", "enrolled_sum") / n if spec.interim is not None else float(design.n_total),
            "expected_n_control": _sum(part, "trial", "control_sum") / n if spec.interim is not None else float(design.n_control),
            "expected_screened": (design.n_total * _sum(part, "trial", "screened_per_enrolled_sum") if spec.interim is None
                                  else _sum(part, "trial", "screened_sum")) / n,  # n / P(eligible), averaged over draws
            "site_sd": _sum(part, "trial", "site_sd_sum") / n,
        }
        variants = [("", spec.borrowing)] + ([("_reference", False)] if "arms_reference" in part[0] else [])
        for (suffix, borrowed), a in ((v, a) for v in variants for a in [*range(a_n), *(["any"] if a_n > 1 else [])]):
            group, idx = ("any" + suffix, None) if a == "any" else ("arms" + suffix, a)
            tot = lambda k: _sum(part, group, k, idx)  # noqa: B023 - used at once, in this iteration
            compared = range(len(sizes)) if a == "any" else (0, a + 1)  # the arms this row's dropout describes
            actives = range(1, len(sizes)) if a == "any" else (a + 1,)
            p = tot("success") / n
            n_ok = tot("ok")
            if a == "any":
                wmean = wse = bias = bias_se = p_benefit = true_effect = float("nan")
                effect = float(scen.effect) if scen.kind == "fixed" and np.ndim(scen.effect) == 0 else float("nan")
            else:
                wn = tot("width_n")
                wmean = tot("width_sum") / wn if wn else float("nan")
                wvar = max(tot("width_sq") / wn - wmean**2, 0.0) if wn else float("nan")
                wse = math.sqrt(wvar / wn) if wn else float("nan")
                bias = tot("error_sum") / n_ok if n_ok else float("nan")
                bvar = max(tot("error_sq") / n_ok - bias**2, 0.0) if n_ok else float("nan")
                bias_se = math.sqrt(bvar / n_ok) if n_ok else float("nan")
                p_benefit, true_effect, effect = tot("p_benefit_sum") / n, tot("true_effect_sum") / n, scen.arm_effect(a)
            n_active = sum(sizes[k] for k in actives)
            row = (
                {
                    "population": design.population,
                    "arm": "any" if a == "any" else design.arm_labels[a + 1],
                    "n_per_arm": design.n_control,
                    "n_treatment": n_active,
                    "n_total": design.n_total,
                    "expected_n": trial_cols["expected_n"],
                    "expected_n_control": trial_cols["expected_n_control"],
                    "expected_n_arm": tot("enrolled_sum") / n if spec.interim is not None else float(n_active),
                    "expected_screened": trial_cols["expected_screened"],
                    "entry_min": design.entry_min if design.entry_min is not None else float("nan"),
                    "sites": design.sites,
                    "site_sd": trial_cols["site_sd"],
                    "primary_week": design.primary_week,
                    "analysis": spec.analysis.method,
                    "dropout_mechanism": design.dropout_mechanism,
                    "dropout": design.pooled_dropout_of(compared),
                    "dropout_control": rates[0],
                    "dropout_treatment": design.pooled_dropout_of(actives) if a == "any" else rates[a + 1],
                    "dropout_source": design.dropout_source,
                    "realised_dropout": sum(sizes[k] * lost[k] for k in compared) / sum(sizes[k] for k in compared),
                    "scenario": scen.label,
                    "effect": effect,
                    "mean_true_effect": true_effect,
                    "sims": n,
                    "p_success": p,
                    "p_success_mcse": math.sqrt(p * (1 - p) / n),
                    "mean_p_benefit": p_benefit,
                    "interval_width": wmean,
                    "interval_width_mcse": wse,
                    "bias": bias,
                    "bias_mcse": bias_se,
                    "failed_analyses": n - n_ok,
                    "mean_completers": tot("completers_sum") / n,
                }
            )
            if spec.borrowing or scen.control_mean is not None:
                row.update(borrowing="map" if borrowed else "none", drift=float("nan") if scen.drift is None else float(scen.drift),
                           control_mean=float("nan") if scen.control_mean is None else float(scen.control_mean))
            th = spec.design_thresholds(d, reference=suffix != "")
            row["threshold"] = th.final
            if spec.interim is not None:
                row["efficacy_threshold"] = th.efficacy
                row.update(_interim_columns(spec.interim, design, tot("stop_efficacy"), tot("stop_futility"), tot("duration_sum"), n))
            if spec.calibration is not None:
                row.update(calibration_alpha=spec.calibration.alpha, calibration_mode=spec.calibration.mode, calibration_sims=th.sims,
                           calibration_type1=th.type1, calibration_type1_mcse=th.type1_mcse)
            rows.append(row)
    table = pd.DataFrame(rows)
    return _robust_columns(spec, table)


def _interim_columns(interim: InterimSettings, design: PlannedTrial, efficacy: list[int], futility: list[int], duration_sum: float, n: int) -> dict:
    """Overall and per-look (look1, look2, ...) stopping probabilities, each look's calendar week and
    information (share of participants whose primary visit is scheduled by then), expected duration."""
    looks = interim.n_looks
    eff = [efficacy[k] / n for k in range(looks)]
    fut = [futility[k] / n for k in range(looks)]
    weeks, info = look_weeks(design, interim), look_information(design, interim)
    cols = {"p_stop_efficacy": sum(eff), "p_stop_futility": sum(fut)}
    for k in range(looks):
        cols[f"p_stop_efficacy_look{k + 1}"] = eff[k]
        cols[f"p_stop_futility_look{k + 1}"] = fut[k]
        cols[f"look{k + 1}_week"] = float(weeks[k])
        cols[f"look{k + 1}_information"] = float(info[k])
    cols["expected_duration_weeks"] = duration_sum / n
    return cols


def _robust_columns(spec: PlanSpec, table: pd.DataFrame) -> pd.DataFrame:
    """Per design and arm row: `assurance` (the assurance scenario's success rate) and `assurance_robust`
    ((1 - w) assurance + w P(success | vague)), with MCSEs, on every row of the design and arm."""
    w = spec.robust_weight
    key = ["population", "n_per_arm", "arm"]
    plain = table[table["scenario"] == "assurance"].set_index(key)
    vague = table[table["scenario"] == "vague"].set_index(key)
    out = table.copy()
    cols = {"assurance": [], "assurance_mcse": [], "assurance_robust": [], "assurance_robust_mcse": []}
    for row in table.itertuples():
        k = (row.population, row.n_per_arm, row.arm)
        a = plain["p_success"].get(k, float("nan"))
        am = plain["p_success_mcse"].get(k, float("nan"))
        if w > 0:
            v, vm = vague["p_success"].get(k, float("nan")), vague["p_success_mcse"].get(k, float("nan"))
            r, rm = (1 - w) * a + w * v, math.hypot((1 - w) * am, w * vm)
        else:
            r, rm = a, am
        for name, value in zip(cols, (a, am, r, rm)):
            cols[name].append(value)
    for name, values in cols.items():
        out[name] = values
    out["robust_weight"] = w
    return out


def smallest_n(table: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per population and arm row (each active arm's success, and "any": at least one arm's): the smallest
    n per arm whose assurance reaches the target (point estimate), and the smallest whose assurance minus
    2 MCSE does (a conservative choice); NaN if the grid never does."""
    rows = []
    for (pop, arm), part in table[table["scenario"] == "assurance"].groupby(["population", "arm"], sort=False):
        part = part.sort_values("n_per_arm")
        hit = part[part["p_success"] >= target]
        safe = part[part["p_success"] - 2 * part["p_success_mcse"] >= target]
        rows.append(
            {
                "population": pop,
                "arm": arm,
                "target_assurance": target,
                "n_per_arm": float(hit["n_per_arm"].iloc[0]) if len(hit) else float("nan"),
                "n_per_arm_conservative": float(safe["n_per_arm"].iloc[0]) if len(safe) else float("nan"),
                "max_assurance": float(part["p_success"].max()),
                "at_n_per_arm": float(part.loc[part["p_success"].idxmax(), "n_per_arm"]),
            }
        )
    return pd.DataFrame(rows)


def plan(params: ParameterSet, spec: PlanSpec, workers: int = 1, scheduler: str | None = None, client=None) -> tuple[pd.DataFrame, dict]:
    """Validate, run and summarise; returns (table, timings)."""
    spec = spec.with_arms(params)
    spec.validate(params)
    t0 = time.perf_counter()
    with dask_client(workers, scheduler, client) as cl:
        if spec.calibration is not None:
            thresholds, reference = calibrate(params, spec, cl)
            spec = replace(spec, thresholds=thresholds, reference_thresholds=reference)
        t1 = time.perf_counter()
        results = map_chunks(run_chunk, params, spec, spec.chunks(), cl)
    wall = time.perf_counter() - t1
    table = summarise(spec, results)
    n_trials = int(table.loc[table["borrowing"] != "none", "sims"].sum() if "borrowing" in table else table["sims"].sum())  # analysed twice, simulated once
    timings = {"wall_s": wall, "trials": n_trials, "trials_per_s": n_trials / wall if wall > 0 else float("nan")}
    if spec.calibration is not None:
        timings["calibration_s"] = t1 - t0
    return table, timings
