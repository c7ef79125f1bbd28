"""The work of fit_trial and rediagnose once their input has been accepted (deptrial.api checks it first).

fit_trial: `run_models` fits the models (in worker processes, fit_models), runs `finish_fit` on each fit beside the
other fits (provenance, verdict, estimates, the files of out/<model>/, PPC, LOO, sensitivity analyses), then compares
the models and writes the report and run.json into the temporary results folder. rediagnose: `rediagnose_folder`
reads a results folder back and recomputes its diagnostics (refits for high Pareto k with `refit_context`).

Every stage after sampling runs under a name (deptrial.errors.stage): a failure there is a RunFailed saying which
stage failed, for which model, and why (fit.py and diagnose.py: exit code 3).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from functools import partial
from pathlib import Path

from data import DatasetError, load_dataset
from data.atomic import atomic_write_bytes, output_lock, usual_permissions
from diagnostics.borrowing import MAP_FILE, Borrowing, posterior_summary
from diagnostics.contrasts import CONTRASTS_FILE, contrasts_table
from diagnostics.convergence import parameter_summary, verdict
from diagnostics.csr_tables import saved_submission_tables, submission_tables
from diagnostics.estimates import format_estimates, model_estimates
from diagnostics.outputs import write_outputs
from diagnostics.remedies import REFIT_MIN_DRAWS
from diagnostics.run import RunDiagnostics, diagnose_model, diagnose_run, score_model
from diagnostics.saved import load_run, saved_answers, saved_contrasts, saved_names
from diagnostics.sensitivity_analyses import SensitivityOptions, model_sensitivity, saved_sensitivity
from diagnostics.summary import answer, baseline_mean, observed_means
from inference.idata_io import provenance, stamp, versions
from inference.jobs import AfterFitError, WorkerFailed, default_jobs, fit_models
from inference.sampling import SamplerSettings, one_blas_thread
from inference.storage import DATA_GROUP, STORAGE, build_arguments, load_fit, save_fit, saved_dataset
from models import REGISTRY, build_design, get
from models.priors import to_json
from planning.params import design_constants

from .console import contrasts_text, data_summary, info_text, sensitivity_text
from .errors import FinishingFailed, SamplingFailed, stage
from .results import ModelFit

finishing = partial(stage, error=FinishingFailed)


@one_blas_thread
def finish_fit(name: str, idata, built, *, out: str, data_source: str, likelihood: str, settings: SamplerSettings,
               info: dict, changes: list, mcid: float, remission_cutoff: float, sensitivity: SensitivityOptions | None = None,
               contrasts=()) -> dict:
    """Everything one model's fit needs before the comparison, run in its worker process beside the
    other fits (or in this process with jobs=1): the provenance stamp, the convergence verdict, the
    estimates and contrasts (`contrasts`: the contrasts asked for, diagnostics.contrasts.parse_contrasts),
    the files in out/<name>/, for visit-score models the PPC, LOO and figures, and with `sensitivity`
    the model's sensitivity analyses (written with the report's files).
    Raises FinishingFailed naming the step that failed."""
    t0 = time.perf_counter()
    spec, design = get(name), built.design
    with finishing("recording the provenance of", name):
        stamp(
            idata,
            model=name,
            likelihood=likelihood,
            priors=to_json(built.priors),
            seed=settings.seed,
            data_checksum=design.checksum,
            data_source=data_source,
            settings=settings.__dict__,
            data_summary=info,
            data_notes=built.notes,
            data_changes=changes,
            design_constants=design_constants(design),  # time coding and marker scaling, for plan.py
        )
    tv = time.perf_counter()
    with finishing("checking the convergence of", name):
        check = verdict(idata, design=design)  # fast path: the population parameters (diagnostics.convergence.judged_posterior)
    verdict_s = time.perf_counter() - tv
    with finishing("tabulating the estimates of", name):
        table = model_estimates(idata, spec, design, mcid)
    with finishing("tabulating the contrasts of", name):
        compared = contrasts_table(idata, design.meta, contrasts, mcid, change_scores=spec.scores_change)
    folder = Path(out) / name
    with finishing("saving", name):
        folder.mkdir()
        written = save_fit(idata, folder / "idata.nc", dataset=design.dataset)
        check.table.to_csv(folder / "convergence.csv")
        parameter_summary(idata, check.stats).to_csv(folder / "summary.csv")  # az.summary's table, from the verdict's statistics
        table.to_csv(folder / "estimates.csv", index=False)
        if compared is not None:
            compared.to_csv(folder / CONTRASTS_FILE, index=False)
        (folder / "convergence.txt").write_text(check.text() + "\n")
    t1 = time.perf_counter()
    diagnosed = None
    with finishing("diagnosing", name):
        if spec.comparable:  # its PPC, LOO and figures, for the report
            labels = tuple(design.meta.arms)
            diagnosed = diagnose_model(name, idata, table, design.arm_idx, labels, remission_cutoff, spec.description, check=check)
        elif spec.compared and "y_participant" in idata.log_likelihood:  # the MMRM: in the comparison on the integrated densities
            diagnosed = score_model(name, idata, table, spec.description, check=check)
    t2 = time.perf_counter()
    with finishing("running the sensitivity analyses of", name):
        sens = model_sensitivity(name, idata, design, sensitivity) if sensitivity is not None else None
    t3 = time.perf_counter()
    with finishing("tabulating the submission tables of", name):  # the ARD; diagnostics.outputs renders the RTF and DOCX
        tables = submission_tables(name, idata, design.dataset, mcid, name, sens, data_source=data_source)
    return {"check": check, "table": table, "contrasts": compared, "notes": built.notes, "diagnostics": diagnosed, "sensitivity": sens,
            "submission": tables, "tables_s": time.perf_counter() - t3,
            "finish_s": t1 - t0, "diagnose_s": t2 - t1, "verdict_s": verdict_s,
            **(diagnosed.timings if diagnosed is not None else {}),
            **({"sensitivity_s": t3 - t2} if sens is not None else {}),
            "idata_bytes": written["bytes"], "write_s": written["write_s"]}


def finish_or_failure(name: str, idata, built, **kwargs) -> dict | FinishingFailed:
    """`finish_fit` as the fits' `after` step: its FinishingFailed is returned, not raised, so that the step that
    failed reaches the main process intact from a worker process (an exception raised there comes back as text)."""
    try:
        return finish_fit(name, idata, built, **kwargs)
    except FinishingFailed as exc:
        return exc


def run_models(specs, ds, design, source, changes, settings, tmp: Path, out: Path, *, likelihood, mcid, remission_cutoff, kfold,
               jobs, quiet, log, say, priors=None, sensitivity: SensitivityOptions | None = None, contrasts=(),
               borrowing: Borrowing | None = None):
    """Fit `specs` and write everything into `tmp` (the results folder `out` being written); returns
    (fits, the content of run.json, the run's diagnostics, the report's path). Raises SamplingFailed,
    FinishingFailed or RunFailed (naming the stage) for a failure once sampling has started."""
    fits: dict[str, ModelFit] = {}
    sensitivities, submissions = {}, {}
    diagnosed, diagnose_s = {}, 0.0  # per-model diagnostics of the visit-score fits
    run = {"data": source, "checksum": design.checksum, "data_changes": changes, "models": {}, "settings": settings.__dict__,
           "versions": versions(), "storage": STORAGE}
    info = data_summary(design)
    if changes:  # what the loader (and an ADaM conversion) changed or left out: the report's data section lists it
        info["changes"] = [str(c.get("text", "")) for c in changes]
    log(info_text(info))
    names = [s.name for s in specs]
    jobs = jobs if jobs is not None else default_jobs(len(names))
    if jobs > 1 and len(names) > 1:
        log(f"\nfitting {len(names)} models, {jobs} at a time (one process each; --jobs 1 fits them in turn)")
    finish = partial(
        finish_or_failure, out=str(tmp), data_source=source, likelihood=likelihood, settings=settings, info=info,
        changes=changes, mcid=mcid, remission_cutoff=remission_cutoff, sensitivity=sensitivity, contrasts=tuple(contrasts),
    )
    # models with biomarkers (the largest) first, so the longest compile starts at once and the small ones fill the other core
    order = list(REGISTRY)
    submit = sorted(names, key=lambda n: (not get(n).needs, -order.index(n)))
    stream = fit_models(
        names, ds, likelihood, settings, jobs, quiet=quiet, submit_order=submit, after=finish,
        announce=lambda n: log(f"\n== {n}: {get(n).description}"), priors=priors,
    )
    try:
        while True:
            try:
                name, idata, timings, done = next(stream)
            except StopIteration:
                break
            except WorkerFailed as exc:  # the sampler's failure becomes advice, not a traceback
                if exc.stage == "after":  # finish_fit raised something other than FinishingFailed
                    cause = str(exc.cause) if isinstance(exc.cause, AfterFitError) else exc.cause  # from a worker: 'Type: message'
                    raise FinishingFailed("saving or checking the fit of", exc.model, cause) from exc
                raise SamplingFailed(exc.model, exc.cause) from exc
            if isinstance(done, FinishingFailed):
                raise done
            with stage("reporting the fit of", name):
                check, table, notes = done["check"], done["table"], done["notes"]
                if notes.get("text"):
                    log(f"  {notes['text']}")
                wall = timings.get("worker_wall_s", timings.get("total_s", 0.0))  # fit only; finishing is timed apart
                timings.update(wall_s=wall, **{k: done[k] for k in ("finish_s", "diagnose_s", "write_s", "verdict_s", "ppc_s", "loo_s",
                                                                     "figures_s", "sensitivity_s", "tables_s") if k in done})
                run["models"][name] = {"converged": check.ok, "timings": timings, "divergences": check.divergences,
                                       "convergence_judged": check.scope, "idata_bytes": done["idata_bytes"]}
                if notes:
                    run["models"][name]["data_notes"] = notes
                fits[name] = ModelFit(name, idata, table, check, timings, notes, done["contrasts"])
                if done["diagnostics"] is not None:
                    diagnosed[name] = done["diagnostics"]
                    diagnose_s += done["diagnose_s"]
                say(f"\n{name}: estimates ({design.meta.outcome_label} points unless a row says otherwise; lower scores are better)")
                say(format_estimates(table))
                key = contrasts_text(done["contrasts"], design.meta.n_arms)
                if key:
                    say(key)
                say(check.text())
                submissions[name] = done["submission"]
                if done.get("sensitivity") is not None:
                    sensitivities[name] = done["sensitivity"]
                    say(sensitivity_text(done["sensitivity"]))
                say(f"({timings['wall_s']:.1f} s: compile {timings.get('compile_s', 0):.1f}, sampling {timings['sample_s']:.1f})")
    finally:
        stream.close()  # on a failure, stop the other fits now
    # the report's checks (trajectory PPC, visit/participant LOO) need visit-score outcomes; models of other
    # outcomes (MMRM change from baseline, biomarker change, mediation) keep their convergence.txt and estimates.csv
    skipped = [n for n in fits if n not in diagnosed]
    if skipped:
        run["not_in_report"] = skipped
        say(f"note: {', '.join(skipped)}: outcome is not the visit scores (y), so no trajectory checks or LOO comparison "
            "in the report (their answers lead it)")
    if contrasts and fits and all(f.contrasts is None for f in fits.values()):
        say(f"note: no contrasts.csv: the contrasts asked for need a model with each arm's mean by week (the trajectory "
            f"models or the MMRM), and {', '.join(fits)} has none")
    if contrasts:
        run["contrasts"] = [c.label for c in contrasts]
    scored_only = [n for n, m in diagnosed.items() if m.ppc is None]
    if scored_only:
        say(f"note: {', '.join(scored_only)}: change from baseline, compared with the trajectory models on the post-baseline "
            "scores given the baseline (no checks of the scores)")
    diag = report = None
    if fits:
        t0 = time.perf_counter()
        labels = tuple(design.meta.arms)
        with stage("summarising the observed data"):
            observed = observed_means(ds, labels)
            baseline = baseline_mean(ds)
        answers = {}
        for n, f in fits.items():
            with stage("summarising the answer of", n):
                answers[n] = answer(n, f.idata, f.estimates, labels, baseline, design.meta.outcome_label, get(n).description,
                                    contrasts=f.contrasts)
        builders = {n: partial(get(n).build, priors=(priors or {}).get(n), likelihood=likelihood) for n in diagnosed}
        with stage("comparing the models (leave-one-out, refits, summary figures)"):
            diag = diagnose_run(
                {n: fits[n].idata for n in diagnosed},
                {n: fits[n].estimates for n in diagnosed},
                design=design,
                builders=builders,
                settings=settings,
                kfold=kfold,
                remission_cutoff=remission_cutoff,
                labels=labels,
                descriptions={n: get(n).description for n in diagnosed},
                title=design.meta.title or source,
                log=log,
                refit_min_draws=REFIT_MIN_DRAWS,
                precomputed=diagnosed,
                answers=answers,
                observed=observed,
                outcome=design.meta.outcome_label,
                data_summary=info,
            )
        diag.sensitivity = sensitivities
        diag.submission = submissions
        if borrowing is not None:
            with stage("summarising the MAP prior and the control arm's posteriors"):
                for n in borrowing.models:
                    borrowing.posteriors[n] = posterior_summary(fits[n].idata, borrowing.control.week, borrowing.prior.robust)
                diag.borrowing = borrowing.record()
                check = diag.borrowing["conflict"]
                run["historical_control"] = {"source": borrowing.historical.source, "trials": len(borrowing.historical),
                                             "models": borrowing.models, "ess_elir": borrowing.prior.ess, "conflict_p": check["p_value"],
                                             "vague_weight_posterior": check["vague_weight_posterior"], "file": MAP_FILE}
                say(f"\nMAP prior from {len(borrowing.historical)} past trials on the control change at week {borrowing.control.week}: "
                    f"ESS {borrowing.prior.ess['robust']['elir']:.1f} (ELIR); prior-data conflict p = {check['p_value']:.3f}"
                    + (f"; vague weight {check['vague_weight_prior']:.2f} -> {check['vague_weight_posterior']:.2f}"
                       if check["vague_weight_prior"] is not None else ""))
        with stage("writing the report and tables"):
            report = write_outputs(diag, tmp)
        for n, tables in submissions.items():  # the submission tables' seconds: the ARD (in finish_fit) and rendering
            run["models"][n]["timings"]["tables_render_s"] = tables.timings.get("render_s", 0.0)
        with stage("reporting the comparison"):
            say("")
            for level, sentence in diag.plain_language.items():
                say(f"comparison ({level} level): {sentence}")
            for note in diag.comparison_notes:
                say(f"note: {note}")
            say(f"report: {out / report.name}  ({time.perf_counter() - t0:.1f} s for diagnostics, comparison and report)")
            run["diagnostics"] = {
                "comparison": {level: table.reset_index().to_dict(orient="records") for level, table in diag.comparisons.items()},
                "plain_language": diag.plain_language,
                "notes": diag.comparison_notes,
                "ppc_flags": {n: m.ppc.flags() for n, m in diag.models.items() if m.ppc is not None},
                "wall_s": time.perf_counter() - t0,
                "per_model_s": diagnose_s,
            }
    with stage("writing run.json"):
        if sensitivity is not None:
            run["sensitivity"] = sensitivity_record(sensitivity, sensitivities)
        (tmp / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    return fits, run, diag, report


def sensitivity_record(options: SensitivityOptions, results: dict) -> dict:
    """What run.json records of the sensitivity analyses: the options, and per model the tables written and the notes."""
    ice = options.ice
    return {
        "ice": {"source": ice.source, "participants": len(ice)} if ice is not None else None,
        "deltas": list(options.deltas) if options.deltas is not None else "default",
        "tipping_threshold": options.threshold,
        "weeks": list(options.weeks) if options.weeks is not None else "default",
        "remission_cutoff": options.remission_cutoff,
        "seed": options.seed,
        "models": {n: {"tables": [f"{t}.csv" for t in r.tables], "not_supported": r.notes, "timings": r.timings} for n, r in results.items()},
    }


# ---------------------------------------------------------------- saved fits


def refit_context(idatas: dict, seed: int | None = None):
    """(design, builders, settings) to refit the saved models, from the data they were fitted to (ValueError if unavailable)."""
    first = next(iter(idatas.values()))
    prov = provenance(first)
    if DATA_GROUP in first.groups():  # the dataset saved with the fit: no need for the original folder
        ds = saved_dataset(first)
    else:
        source = prov.get("data_source")
        if not source or not Path(source).is_dir():
            raise ValueError(f"cannot refit: the dataset the fits were made from ({source}) is not available")
        try:
            ds = load_dataset(source)
        except DatasetError as exc:
            raise ValueError(f"cannot refit: {exc}") from exc
    design = build_design(ds)
    if design.checksum != prov.get("data_checksum"):
        raise ValueError("cannot refit: the dataset differs from the one the fits were made from (checksum differs)")
    builders = {}
    for name, idata in idatas.items():
        p = provenance(idata)
        try:
            spec = get(str(p.get("model", name)))
        except KeyError as exc:
            raise ValueError(f"cannot refit '{name}': {exc.args[0]}") from exc
        builders[name] = partial(spec.build, **build_arguments(idata, spec, design))  # its priors, likelihood and covariates
    saved = prov.get("settings") or {}
    fields = {f.name for f in dataclasses.fields(SamplerSettings)}
    settings = SamplerSettings(**{k: v for k, v in saved.items() if k in fields})
    if seed is not None:
        settings = dataclasses.replace(settings, seed=seed)
    return design, builders, settings


def saved_fits_sensitivity(results: Path, loaded: dict, options: SensitivityOptions, log, kept: str = "") -> dict:
    """Every saved model's sensitivity analyses; fits not loaded yet (the biomarker models) are read back whole.
    A failure of the analyses (not of reading a fit) raises RunFailed naming the model."""
    out, designs = {}, {}
    for name in saved_names(results):
        idata = loaded.get(name)
        if idata is None:
            idata = load_fit(results / name / "idata.nc")
        checksum = str(provenance(idata).get("data_checksum", ""))
        if checksum not in designs:
            designs[checksum] = build_design(saved_dataset(idata))
        log(f"sensitivity: {name}")
        with stage("running the sensitivity analyses of", name, kept=kept, when=""):
            out[name] = model_sensitivity(name, idata, designs[checksum], options)
    return out


def rediagnose_folder(results: Path, *, kfold: int, refit_levels, seed: int | None, remission_cutoff: float, quiet: bool,
                      options: SensitivityOptions | None, contrasts=None) -> tuple[RunDiagnostics, Path]:
    """rediagnose's work on a results folder whose options are checked: read the saved fits (FileNotFoundError,
    ValueError: nothing done), then diagnose and write (RunFailed naming the stage; saved fits never touched).
    contrasts: the contrasts asked for (parsed), recomputing every model's contrasts.csv; None: the saved ones as they are."""
    idatas, estimates = load_run(results)
    design = builders = settings = None
    if kfold and not idatas:
        raise ValueError(f"--kfold refits the fits of the visit scores, and {results} holds none (only models of other outcomes): "
                         "run diagnose.py without --kfold")
    if kfold:
        design, builders, settings = refit_context(idatas, seed)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    unchanged = f"nothing in {results} was changed"
    tables = None
    if contrasts is not None:
        with stage("tabulating the contrasts of the saved fits", kept=unchanged, when=""):
            tables = saved_contrasts(results, contrasts, loaded=idatas)
    saved = saved_answers(results, loaded=idatas, contrasts=tables)
    if options is not None:
        sens = saved_fits_sensitivity(results, idatas, options, log, kept=unchanged)
    else:
        sens = saved_sensitivity(results, idatas)
    with stage("diagnosing the saved fits (checks, leave-one-out, refits, comparison)", kept=unchanged, when=""):
        run = diagnose_run(idatas, estimates, design=design, builders=builders, settings=settings, kfold=kfold,
                           remedy_levels=tuple(refit_levels), remission_cutoff=remission_cutoff, log=log,
                           answers=saved.answers or None, observed=saved.observed, labels=saved.labels, outcome=saved.outcome,
                           title=saved.title)
    run.sensitivity = sens
    if (results / MAP_FILE).is_file():  # a fit with a MAP prior from past trials: its section stays in the report
        run.borrowing = json.loads((results / MAP_FILE).read_text())
    with stage("tabulating the submission tables of the saved fits", kept=unchanged, when=""):
        run.submission = saved_submission_tables(results, idatas, sens)
    partly = f"the saved fits in {results} are unchanged; each file is whole, but some may be from this run and others from before"
    with output_lock(results), stage(f"writing the diagnostics into {results}", kept=partly, when=""):  # the lock: never interleave
        for name, table in (tables or {}).items():
            atomic_write_bytes(results / name / CONTRASTS_FILE, table.to_csv(index=False).encode())
            usual_permissions(results / name / CONTRASTS_FILE)
        report = write_outputs(run, results)  # with a fit.py --force replacing this folder
    return run, report
