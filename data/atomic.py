"""Safe outputs: atomic writes, one writer per output, recovery after a killed run.

A run killed at any moment (even SIGKILL) leaves the previous complete output or none, never a
partial one: everything is written into a temporary sibling folder and renamed into place
(rename is atomic on one filesystem); a replaced folder is first moved aside, then deleted.

Two runs writing the same output cannot corrupt each other: `output_lock` takes an exclusive
`flock` on a sibling lock file, and a second run is refused with the holder's pid. The kernel
drops the lock when its process dies, so a lock left by a killed run is never an obstacle.

Every command that writes results should use `locked_output`:

    from data.atomic import OutputBusy, locked_output

    try:
        with locked_output(out, overwrite=args.force) as tmp:
            (tmp / "report.csv").write_text(...)     # write everything under tmp
    except (FileExistsError, OutputBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

An exception inside the block removes the temporary folder and leaves `out` untouched.
For a single file, `atomic_write_bytes` / `atomic_write_text` do the same (without the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path


class OutputBusy(RuntimeError):
    """Another live process is writing the same output."""


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _old_prefix(target: Path) -> str:
    return f".{target.name}.old-"


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _fsync_tree(folder: Path) -> None:
    """Flush every file under `folder` to disk, so the rename publishes complete files even on power loss."""
    for path in folder.rglob("*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False):
    """Yield a temporary folder; on success it replaces `target`, on error it is removed.

    Without `overwrite`, an existing `target` is refused both on entry and at the final rename
    (another process may have created it meanwhile), so results are never silently replaced.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; use --force (overwrite=True) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    usual_permissions(tmp, folder=True)  # mkdtemp makes it private; the results are the user's, as with mkdir
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            if not overwrite:
                raise FileExistsError(f"{target} was created by another process while this one ran; nothing was replaced")
            old = Path(tempfile.mkdtemp(prefix=_old_prefix(target), dir=target.parent))
            os.replace(target, old / "previous")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_interrupted(target: str | Path) -> list[str]:
    """Clean up after a run that was killed while writing `target`; call only while holding its lock.

    Removes leftover temporary folders; if the kill came between moving the previous output aside
    and renaming the new one in, the previous output is restored. Returns what was done.
    """
    target = Path(target)
    done = []
    if not target.parent.is_dir():
        return done
    for tmp in sorted(target.parent.glob(_tmp_prefix(target) + "*")):
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed the unfinished output {tmp.name} of an interrupted run")
    for old in sorted(target.parent.glob(_old_prefix(target) + "*")):
        previous = old / "previous"
        if previous.is_dir() and not target.exists():
            os.replace(previous, target)
            done.append(f"restored the previous {target.name} that an interrupted run had moved aside")
        shutil.rmtree(old, ignore_errors=True)
    return done


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    since = info.get("started", "")
    return f"process {info.get('pid', '?')} on {info.get('host', '?')}" + (f" (since {since})" if since else "")


@contextlib.contextmanager
def output_lock(target: str | Path):
    """Hold an exclusive lock on writing `target`; raise OutputBusy at once if a live process holds it.

    The lock is an flock on `.<name>.lock` beside `target`: released by the kernel when the holder
    exits or is killed (stale locks cannot block), removed on a clean exit. Local filesystems only
    (flock over NFS is not reliable).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(target)
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(
                f"{target} is being written by {_holder(path)}; wait for it to finish or choose another --out"
            ) from None
        # the file may have been removed (and re-created) by a holder finishing just now: retry on the new one
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:  # pragma: no cover - needs five lost races in a row
        raise OutputBusy(f"could not lock {target}: the lock file {path} keeps changing")
    try:
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}
        os.write(fd, json.dumps(info).encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def locked_output(target: str | Path, overwrite: bool = False):
    """Lock `target`, recover from an interrupted earlier run, then write it atomically (see module doc)."""
    target = Path(target)
    with output_lock(target):
        recover_interrupted(target)
        with atomic_folder(target, overwrite=overwrite) as tmp:
            yield tmp


def usual_permissions(path: str | Path, folder: bool = False) -> None:
    """Give a file the mode a plain open() would have (0666 less the umask), or a folder that of mkdir
    (0777 less the umask): mkstemp files and mkdtemp folders start private."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if folder else 0o666) & ~mask)


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write one file atomically: a temporary sibling, flushed, renamed over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
