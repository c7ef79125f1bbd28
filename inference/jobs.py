"""Fit several models side by side, one worker process per model, with the same numbers as one by one.

Most of a cold fit is compiling the log-density (numba, one core), and a main job fits three models.
Fitting them in parallel worker processes keeps both cores busy through the compiles, so the
main job takes about as long as its slowest model instead of the sum of all of them.

Each worker builds its model from the loaded dataset (an xarray Dataset, pickled to it), the
registry name and the likelihood (a pm.Model does not pickle reliably) and samples it with the
same SamplerSettings, so its draws are bit-identical to an in-process fit: every random stream comes from settings.seed, and nutpie's
chains do not depend on thread scheduling. Workers start with 'spawn' (no fork of a process that
already holds compiled code and threads) and their progress lines go to stderr prefixed by the
model name. A worker's exception is re-raised in the caller as `WorkerFailed`.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

import xarray as xr

from models import build_design, get

from .sampling import SamplerSettings, sample_all


class WorkerFailed(RuntimeError):
    """A model's fit (stage 'fit') or the work after it (stage 'after') raised; `cause` is the original exception."""

    def __init__(self, model: str, cause: BaseException, stage: str = "fit"):
        super().__init__(str(cause))
        self.model, self.cause, self.stage = model, cause, stage


class AfterFitError(RuntimeError):
    """Raised in a worker when `after` fails, so the caller can tell it from a failed fit (pickles by message)."""


class _Prefixed:
    """stderr wrapper that starts every line with the model's name (workers share one terminal)."""

    def __init__(self, stream, prefix: str):
        self._stream, self._prefix, self._at_start = stream, prefix, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_start and piece.strip():
                out.append(self._prefix)
            out.append(piece)
            self._at_start = piece.endswith("\n")
        self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False  # no progress bars from several processes at once


def _die_with_parent() -> None:
    """Worker initializer: on Linux, ask the kernel to kill this worker if the parent process dies
    (a killed fit.py must not leave orphans compiling and sampling)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _fit_in_worker(name: str, dataset: xr.Dataset, likelihood: str, settings: SamplerSettings, quiet: bool, after=None, priors=None):
    """Worker process entry: progress lines prefixed with the model's name, then `_fit_model` and `after`."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    sys.stderr = _Prefixed(sys.__stderr__, f"[{name}] ")
    idata, timings, built = _fit_model(name, dataset, likelihood, settings, quiet, priors)
    try:
        return idata, timings, after(name, idata, built) if after is not None else None
    except Exception as exc:
        raise AfterFitError(f"{type(exc).__name__}: {exc}") from exc


def _fit_model(name: str, dataset: xr.Dataset, likelihood: str, settings: SamplerSettings, quiet: bool, priors: dict | None = None):
    """Build (with prior overrides, if any) and sample one model; returns (idata, timings, built)."""
    import time

    t0 = time.perf_counter()
    built = get(name).build(build_design(dataset), priors=priors, likelihood=likelihood)
    idata, timings = sample_all(built, settings, quiet=quiet)
    timings["worker_wall_s"] = time.perf_counter() - t0
    return idata, timings, built


@contextmanager
def _main_script_hidden():
    """While workers start: a spawned worker imports the parent's main script (when it was run as
    `python script.py`) before it runs anything. The workers need nothing from it (their entry point
    is this module), and a script without an `if __name__ == "__main__":` guard, such as the README's
    example saved to a file, would start the fits again in every worker. So the script's path is
    hidden from multiprocessing while the workers start."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:  # `python -m ...` or interactive: nothing to hide
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def default_jobs(n_models: int) -> int:
    """Parallel fits by default: one per model, at most one per CPU core."""
    return max(1, min(n_models, os.cpu_count() or 1))


def fit_models(
    names: list[str],
    dataset: xr.Dataset,
    likelihood: str,
    settings: SamplerSettings,
    jobs: int,
    quiet: bool = False,
    submit_order: list[str] | None = None,
    after: Callable | None = None,
    announce: Callable[[str], None] | None = None,
    priors: dict[str, dict] | None = None,
) -> Iterator[tuple[str, object, dict, object]]:
    """Yield (name, idata, timings, after(name, idata, built)) in the order of `names`, fitting up to
    `jobs` models at once.

    `after` (a module-level function or a partial of one, so it pickles) runs in the worker right
    after the fit, in parallel with the other fits: deptrial.orchestrate stamps, checks, tabulates, saves and
    diagnoses the fit there. Without it the fourth element is None.

    jobs <= 1 (or a single model) fits in this process, one model after another, calling
    `announce(name)` before each. `submit_order` (the slowest first) only changes which model a free
    worker starts next, not the results or the order they are yielded in. `priors` maps a model's name
    to its prior overrides (models.priors.resolve).
    Raises WorkerFailed for the first model (in `names` order) whose fit raised; the other workers are
    then stopped.
    """
    if jobs <= 1 or len(names) <= 1:
        for name in names:
            if announce is not None:
                announce(name)
            try:
                idata, timings, built = _fit_model(name, dataset, likelihood, settings, quiet, (priors or {}).get(name))
            except Exception as exc:
                raise WorkerFailed(name, exc) from exc
            try:
                extra = after(name, idata, built) if after is not None else None
            except Exception as exc:
                raise WorkerFailed(name, exc, stage="after") from exc
            yield name, idata, timings, extra
        return
    # each worker's sampler keeps settings.cores threads; the workers share the machine's cores
    finished = False
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(names)), mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent
    )
    try:
        order = [n for n in (submit_order or []) if n in names] + [n for n in names if n not in (submit_order or [])]
        with _main_script_hidden():  # the workers start at the first submit
            futures = {name: pool.submit(_fit_in_worker, name, dataset, likelihood, settings, quiet, after, (priors or {}).get(name)) for name in order}
        for name in names:
            try:
                idata, timings, extra = futures[name].result()
            except AfterFitError as exc:
                raise WorkerFailed(name, exc, stage="after") from exc
            except Exception as exc:
                raise WorkerFailed(name, exc) from exc
            yield name, idata, timings, extra
        finished = True
    finally:
        if not finished:  # a failure or an abandoned loop: stop the other fits now rather than wait for them
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=finished, cancel_futures=True)
