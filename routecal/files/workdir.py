"""Workdir safety: a lock per workdir, atomic writes, readers that name the file, relative paths.

    with workdir.lock(w, "study"):                    # one process per workdir at a time
        data = workdir.read_json(w / "stages" / "x.json")          # ValueError naming the file
        workdir.write_json(w / "results.json", results)            # temp file + os.replace
        stored = workdir.to_relative(path, w)                      # "runs/full/seed0/..."
        path = workdir.from_relative(stored, w)                    # w / stored, never outside w

Writes go to a temporary file in the same directory, then `os.replace` puts it in place: a reader
(or a resumed run after a kill or a full disk) sees the old file or the new one, never half of one.
An `OSError` while writing or reading is re-raised with the file's path in its message.

The lock is a file `<workdir>/.routecal.lock` holding the owner's pid, host and start time, created
atomically (`os.link` of a complete temp file), held for the whole run and removed at the end. A lock
left by a dead process on this host is taken over with a message on stderr; a live holder (or one on
another host, whose liveness cannot be checked here) gets a `WorkdirLocked` error naming it. The
lock is re-entrant within one process.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import pathlib
import socket
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

LOCK_NAME = ".routecal.lock"

# ----------------------------------------------------------------------------------------------
# Errors that name the file
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def naming(path: str | os.PathLike, action: str = "write") -> Iterator[None]:
    """Re-raises an `OSError` (disk full, permission, ...) as one that names `path`.

    The new error keeps the errno and has `filename` set, so `str(e)` reads
    "[Errno 28] cannot write results.json: No space left on device: '/w/results.json'".
    """
    try:
        yield
    except OSError as e:
        if e.filename is not None and pathlib.Path(e.filename) == pathlib.Path(path):
            raise
        msg = e.strerror or str(e) or type(e).__name__
        raise OSError(e.errno, f"cannot {action} {pathlib.Path(path).name}: {msg}", str(path)) from e


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yields a temp path beside `path`; on success it replaces `path`, on failure it is removed.

    For writers that want a file name (e.g. a library's `save(path)`). The temp name starts with a
    dot and ends with `.tmp`, so a leftover from a killed process is never mistaken for output.
    """
    path = pathlib.Path(path)
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        with naming(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Writes `data` to `path` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return pathlib.Path(path)


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> pathlib.Path:
    """Writes `obj` as JSON (sorted keys, trailing newline) to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def save_npz(
    path: str | os.PathLike, arrays: Mapping[str, Any], *, compressed: bool = False
) -> pathlib.Path:
    """`np.savez[_compressed](path, **arrays)`, atomically (the name is kept as given)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> pathlib.Path:
    """`fig.savefig(path, ...)` for a matplotlib figure, atomically (format from the suffix)."""
    path = pathlib.Path(path)
    buf = io.BytesIO()
    fmt = savefig_kwargs.pop("format", path.suffix.lstrip(".") or "png")
    fig.savefig(buf, format=fmt, **savefig_kwargs)
    return write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------
# Readers that name the file
# ----------------------------------------------------------------------------------------------


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads(..., object_pairs_hook=reject_duplicate_keys)`: a JSON object whose key repeats
    is a ValueError (plain `json` keeps the last value silently)."""
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate key(s) {dup}")
    return dict(pairs)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parses the JSON file `path`.

    Raises:
      ValueError: the file is missing, unreadable or not valid JSON (e.g. truncated by a kill),
        naming `what` and the path.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ValueError(f"{what}: no such file {str(path)!r}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{what}: cannot read {str(path)!r} ({e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {str(path)!r} is not valid JSON (corrupt or truncated: {e})") from e


def read_jsonl(path: str | os.PathLike, what: str = "file") -> tuple[list[Any], bool]:
    """The records of a JSON-lines file, and whether a partial last line was dropped.

    A last line without its newline that does not parse is what a kill during an append leaves:
    it is dropped. Any other unparsable line is corruption.

    Raises:
      ValueError: a complete line that is not JSON (naming the path and line number), or the file
        cannot be read.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{what}: cannot read {str(path)!r} ({e})") from e
    lines = text.split("\n")  # the last item is "" when the file ends with a newline
    records, dropped = [], False
    for i, ln in enumerate(lines, start=1):
        if not ln.strip():
            continue
        try:
            records.append(json.loads(ln))
        except json.JSONDecodeError as e:
            if i == len(lines):  # no newline after it: a partial append
                dropped = True
                continue
            raise ValueError(f"{what}: {str(path)!r} line {i} is not valid JSON ({e})") from e
    return records, dropped


def load_npz(path: str | os.PathLike, what: str = "file") -> dict[str, np.ndarray]:
    """Every array of the `.npz` file `path`, read fully (so CRC errors surface here).

    Raises:
      ValueError: missing file, not an npz archive (e.g. a `.npy` or text file), truncated or
        corrupt (bad zip, bad CRC), or object arrays (pickles are refused), naming the path.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no such file {str(path)!r}")
    with naming(path, "read"), open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise ValueError(
            f"{what}: {str(path)!r} is a single .npy array, not an .npz archive of named arrays "
            "(save with np.savez(path, probs=..., labels=..., ...))"
        )
    if not magic.startswith(b"PK"):
        raise ValueError(
            f"{what}: {str(path)!r} is not an .npz archive (an .npz is a zip file; this one starts "
            f"with {magic!r}{', it is empty' if not magic else ''})"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{what}: {str(path)!r} is not a readable .npz file ({e})") from e
    try:
        with loaded as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{what}: {str(path)!r} is corrupt or truncated ({e})") from e


# ----------------------------------------------------------------------------------------------
# Stored paths: relative to the workdir
# ----------------------------------------------------------------------------------------------


def to_relative(path: str | os.PathLike, workdir: str | os.PathLike) -> str:
    """`path` as a POSIX string relative to `workdir` (what a workdir stores).

    Raises:
      ValueError: `path` lies outside `workdir` (a workdir must be self-contained).
    """
    p, w = pathlib.Path(path).absolute(), pathlib.Path(workdir).absolute()
    try:
        return p.relative_to(w).as_posix()
    except ValueError:
        pass
    try:  # the same place spelt through a symlink
        return p.resolve().relative_to(w.resolve()).as_posix()
    except ValueError as e:
        raise ValueError(f"path: {str(p)!r} lies outside the workdir {str(w)!r}") from e


def from_relative(stored: str, workdir: str | os.PathLike) -> pathlib.Path:
    """The path `stored` (relative to `workdir`) names inside `workdir`.

    Raises:
      ValueError: `stored` is absolute or climbs out of the workdir (written by an older routecal,
        or by the workdir this one was copied from): reading it would read another workdir.
    """
    rel = pathlib.PurePosixPath(stored)
    if rel.is_absolute() or pathlib.PureWindowsPath(stored).is_absolute() or ".." in rel.parts:
        raise ValueError(
            f"path: stored path {stored!r} is not inside the workdir {str(workdir)!r} (absolute or "
            "'..'); it was written elsewhere (an older routecal or a copied workdir)"
        )
    return pathlib.Path(workdir) / pathlib.Path(*rel.parts)


# ----------------------------------------------------------------------------------------------
# The workdir lock
# ----------------------------------------------------------------------------------------------


class WorkdirLocked(ValueError):
    """Another live process holds the workdir's lock."""


_held: dict[str, int] = {}  # lock path -> re-entry count, for this process


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: Mapping[str, Any]) -> str:
    what = holder.get("what", "a routecal run")
    return f"{what} (pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')})"


def _try_create(path: pathlib.Path, record: Mapping[str, Any]) -> bool:
    """Creates `path` holding `record` if it does not exist; atomic (link of a complete file)."""
    with naming(path, "create"):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record) + "\n")
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)


def _read_holder(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
        return rec if isinstance(rec, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: only a crash mid-write can leave it (creation is atomic)


def acquire(workdir: str | os.PathLike, what: str = "run") -> pathlib.Path:
    """Takes the lock of `workdir` (creating the directory); see `lock`. Returns the lock path."""
    w = pathlib.Path(workdir)
    with naming(w, "create"):
        w.mkdir(parents=True, exist_ok=True)
    path = (w / LOCK_NAME).absolute()
    key = str(path.resolve())
    if key in _held:
        _held[key] += 1
        return path
    host = socket.gethostname()
    record = {
        "pid": os.getpid(), "host": host, "what": f"routecal {what}",
        "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    for _ in range(10):
        if _try_create(path, record):
            _held[key] = 1
            return path
        holder = _read_holder(path)
        if holder is None:  # released meanwhile
            continue
        pid = holder.get("pid")
        stale = not holder or (
            holder.get("host") == host and isinstance(pid, int) and not _pid_alive(pid)
        )
        if not stale:
            raise WorkdirLocked(
                f"workdir: {w} is in use by {_describe(holder)}; wait for it to finish or use "
                f"another workdir (if that process is gone, delete {path})"
            )
        print(
            f"routecal: taking over the stale lock of {w} left by "
            f"{_describe(holder) if holder else 'an unreadable lock file'}, no longer running",
            file=sys.stderr,
        )
        path.unlink(missing_ok=True)
    raise WorkdirLocked(f"workdir: could not take the lock {path} (contended)")


def release(workdir: str | os.PathLike) -> None:
    """Releases this process's lock of `workdir` (the file is removed when the last hold ends)."""
    path = (pathlib.Path(workdir) / LOCK_NAME).absolute()
    key = str(path.resolve())
    if key not in _held:
        return
    _held[key] -= 1
    if _held[key] > 0:
        return
    del _held[key]
    holder = _read_holder(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def lock(workdir: str | os.PathLike, what: str = "run", *, enabled: bool = True) -> Iterator[None]:
    """Holds the lock of `workdir` for the `with` block.

    Args:
      workdir: the directory (created if missing).
      what: the holder's description shown to a refused process ("train", "study", ...).
      enabled: False makes this a no-op (e.g. on the non-primary processes of a multi-host job,
        which share the primary's workdir).

    Raises:
      WorkdirLocked (a ValueError): another live process holds it, named with pid and host.
    """
    if not enabled:
        yield
        return
    acquire(workdir, what)
    try:
        yield
    finally:
        release(workdir)
