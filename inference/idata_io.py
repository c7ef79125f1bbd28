"""All InferenceData I/O: one netCDF per fit, stamped with provenance, written atomically."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import arviz as az

from data.atomic import usual_permissions

PACKAGES = ("pymc", "pytensor", "arviz", "nutpie", "numpy", "pandas", "xarray", "numba")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_average() -> list[float]:
    """The machine's load average over 1, 5 and 15 minutes."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_record() -> dict:
    """Date, machine and load at the start of a run (stored in results.json, printed atop results.md)."""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {cpu}".strip(),
        "cpus": os.cpu_count(),
        "memory_gb": round(memory_gb, 1) if memory_gb else None,
        "python": platform.python_version(),
        "load_start": load_average(),
    }


def measured_on(meta: dict) -> str:
    """The opening of a benchmark table: when, on what, and the load at the start and end of `machine_record`'s run
    (meta['load_end'] set when it ended)."""
    load = lambda key: ", ".join(f"{x:.2f}" for x in meta[key]) + " (1, 5, 15 min)" if meta.get(key) else "not recorded"  # noqa: E731
    return (f"Measured {meta['date']} on {meta['machine']}, {meta['cpus']} CPUs; load average at the start {load('load_start')}, "
            f"at the end {load('load_end')}")



def stamp(idata: az.InferenceData, **attrs) -> az.InferenceData:
    """Record provenance on every group (netCDF keeps per-group attrs)."""
    base = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": json.dumps(versions(), sort_keys=True),
    }
    base.update({k: (v if isinstance(v, (str, int, float)) else json.dumps(v, sort_keys=True, default=str)) for k, v in attrs.items()})
    for group in idata.groups():
        idata[group].attrs.update(base)
    return idata


# HDF5 filters on the numeric variables: none. Posterior and predictive draws are random to their last bits, so lossless
# compression shrinks them little (the bundled trial's fits: gzip level 1 to 9 with byte shuffle made the files 10 to 15%
# smaller and took 1.5 to 4 times as long to write; docs/diagnostics.md, saved fits); None writes them as they are.
COMPRESSION: dict | None = None


def _write_netcdf(idata: az.InferenceData, path: str) -> None:
    """Every group of `idata` into one netCDF4 file (az.from_netcdf reads it), written as `Dataset.to_netcdf(path,
    group=..., engine="h5netcdf")` writes each group but in one session of the file: the file is opened once, and
    no dask scheduler is looked up (to_netcdf's lookup imports dask.distributed, half a second)."""
    import h5netcdf
    from xarray.backends import H5NetCDFStore
    from xarray.backends.writers import dump_to_store

    with h5netcdf.File(path, "w") as file:
        for group in idata.groups():
            data = idata[group]
            encoding = ({name: dict(COMPRESSION) for name, var in data.variables.items() if var.dtype.kind in "biuf" and var.ndim > 0}
                        if COMPRESSION else {})
            dump_to_store(data, H5NetCDFStore(file.create_group(group)), encoding=encoding)


def save_idata(idata: az.InferenceData, path: str | Path) -> Path:
    """Write netCDF to a temporary file beside the target, then rename: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _write_netcdf(idata, tmp)
        usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_idata(path: str | Path) -> az.InferenceData:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved fit at {path}")
    return az.from_netcdf(path)


def provenance(idata: az.InferenceData) -> dict:
    """The provenance attrs of a saved fit, JSON fields decoded."""
    attrs = dict(idata.posterior.attrs)
    for key in ("versions", "priors", "settings"):
        if key in attrs and isinstance(attrs[key], str):
            try:
                attrs[key] = json.loads(attrs[key])
            except json.JSONDecodeError:
                pass
    return attrs
