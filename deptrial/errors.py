"""What a run raises once its work has started (fit.py and diagnose.py exit with code 3 on these).

Bad input is refused before any work with the errors of the layer that finds it (DatasetError, ModelDataError,
ValueError, KeyError, FileExistsError, OutputBusy: exit code 2). Once sampling has started, a failure is a
`RunFailed` naming the stage that failed, the model (if one), the cause in one line, and what was kept:

    RunFailed       a stage of the run failed (comparing the models, writing the report, ...)
    SamplingFailed  a model's sampling raised, with advice (a RunFailed)
    FinishingFailed a model sampled but a step after it failed (saving, checking, diagnosing it, ...; a RunFailed)
"""

from __future__ import annotations

from contextlib import contextmanager


def one_line(cause: BaseException | str | None) -> str:
    """'Type: first line of the message' of an exception (no traceback); a text as it is."""
    if cause is None or isinstance(cause, str):
        return cause or ""
    first = (str(cause).strip().splitlines() or [""])[0].strip()
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


class RunFailed(RuntimeError):
    """A stage of a run failed after its work had started (after sampling, for fit_trial).

    stage  what was being done, e.g. 'diagnosing' or 'writing the report'
    model  the model it was done for, or None for the whole run
    cause  the exception (or its text, for one raised in a worker process)
    kept   what is left on disk, e.g. 'nothing was written at results' (set by the entry point, which knows)
    when   how the message places the failure ('after sampling'; '' for diagnose.py's work on saved fits)
    """

    def __init__(self, stage: str, model: str | None = None, cause: BaseException | str | None = None, kept: str = "",
                 when: str = "after sampling"):
        self.stage, self.model, self.cause, self.kept, self.when = stage, model, cause, kept, when
        super().__init__(stage, model, one_line(cause), kept, when)

    def __reduce__(self):  # pickles with the cause as text (a worker process returns it to the main one)
        return (type(self), (self.stage, self.model, one_line(self.cause), self.kept, self.when))

    @property
    def what(self) -> str:
        return f"{self.stage} model '{self.model}'" if self.model else self.stage

    def message(self) -> str:
        """What failed and why, in one line."""
        cause = one_line(self.cause)
        return f"{self.what} failed{' ' + self.when if self.when else ''}" + (f": {cause}" if cause else "")

    def __str__(self) -> str:
        return self.message() + (f"\n{self.kept}" if self.kept else "")


class FinishingFailed(RunFailed):
    """A model sampled but a step after it (recording provenance, checking convergence, tabulating, saving,
    diagnosing, the sensitivity analyses) failed; `stage` names the step."""


class SamplingFailed(RunFailed):
    """A model's sampling raised (e.g. no chain could initialise): reported with advice."""

    def __init__(self, model: str, exc: BaseException | str, kept: str = ""):
        super().__init__("sampling", model, exc, kept, when="")
        text = str(exc)
        first = (text.strip().splitlines() or [type(exc).__name__])[0]
        cause = " ".join(line.strip() for line in text.splitlines()[1:4] if line.strip() and "backtrace" not in line.lower())
        kind = type(exc).__name__ if isinstance(exc, BaseException) else "error"
        self.text = f"sampling model '{model}' failed: {kind}: {first}" + (f" ({cause})" if cause else "")
        if "init" in text.lower():
            self.advice = (
                "no chain could start: the log-density is not finite at the starting points. Check the data for "
                "extreme values, try the robust model (--likelihood student), another --seed, or --sampler pymc"
            )
        else:
            self.advice = (
                "try more tuning (--tune), a higher --target-accept (e.g. 0.95), the robust model "
                "(--likelihood student), or --sampler pymc to cross-check"
            )

    def __reduce__(self):
        return (type(self), (self.model, one_line(self.cause), self.kept))

    def message(self) -> str:
        return f"{self.text}\nadvice: {self.advice}"


@contextmanager
def stage(what: str, model: str | None = None, *, error: type[RunFailed] = RunFailed, kept: str = "", when: str = "after sampling"):
    """Run a block as a named stage: an exception in it becomes `error(what, model, cause)` (a RunFailed as it is)."""
    try:
        yield
    except RunFailed:
        raise
    except Exception as exc:
        raise error(what, model, exc, kept=kept, when=when) from exc
