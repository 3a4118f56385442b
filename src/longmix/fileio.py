"""Writing files that users keep without ever leaving half of one, and never through a planted link.

Two kinds of file, two ways to write:

* a whole file (a report, a table, a checkpoint) is replaced atomically: :func:`atomic_replace`
  writes a temporary file next to it, fsyncs it and renames it over the target, so the target
  always holds the old content or the new, never a torn mix;
* a record file (``results.jsonl``: one JSON object per line) only grows: :func:`append_record`
  adds one strict-JSON line, fsynced, and repairs the torn last line a crash may have left.

A write that runs out of space (ENOSPC, or a quota) raises :class:`DiskFull`, naming the path,
about how many bytes it needed and how many were free; the target keeps its previous content.

Temporary files get unpredictable names and are created with ``O_EXCL | O_NOFOLLOW``
(:func:`tempfile.mkstemp`): a file or symlink planted at a guessable name is never written
through, and two writers never share a temporary file.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import platform
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import IO, Iterator

from .provenance import utc_now

#: Temporary files are ``.<target name>.<random>.tmp`` next to the target (hidden, and matched by
#: :func:`remove_stale_temps`).
_TMP_SUFFIX = ".tmp"


class DiskFull(OSError):
    """A write ran out of space. ``path`` is the file it was writing, ``needed`` about how many
    bytes the write needed (None if unknown), ``free`` the bytes free on its file system then."""

    def __init__(self, path: str | os.PathLike, needed: int | None, free: int | None):
        self.path, self.needed, self.free = Path(path), needed, free
        need = f"about {_size(needed)}" if needed is not None else "an unknown amount"
        have = f"{_size(free)} free" if free is not None else "free space unknown"
        super().__init__(errno.ENOSPC, f"no space left on the device writing {self.path}: it needed "
                         f"{need}, {have} there; its previous content, if any, is intact. Free some "
                         f"space or write elsewhere (--out)")

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):  # OSError pickles as (errno, strerror); rebuild from the fields instead
        return type(self), (self.path, self.needed, self.free)


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit} ({n:,} bytes)"
    return f"{n} bytes"


def is_disk_full(err: BaseException) -> bool:
    """Did ``err`` come from a full disk or quota? Also looks along its chain of causes: torch's
    serializer answers an ENOSPC from the file with a RuntimeError ("unexpected pos ...")."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free to this user on the file system holding ``path`` (its folder); None if unknown."""
    try:
        return shutil.disk_usage(Path(path).parent).free
    except OSError:
        return None


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or creation in directory ``path`` durable; best effort (impossible on some
    platforms, e.g. Windows, and on some file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_replace(path: str | os.PathLike, mode: str = "wb", size_hint: int | None = None) -> Iterator[IO]:
    """``with atomic_replace(path) as f: f.write(...)``: ``path`` is replaced by what was written
    when the block ends, or left untouched if it raises (the temporary file is removed).

    ``mode`` is "wb" or "w" (text, UTF-8). A hard kill (SIGKILL) mid-write leaves at most a
    hidden temporary file, which :func:`remove_stale_temps` clears. Running out of space raises
    :class:`DiskFull`; ``size_hint`` (about how many bytes will be written) goes in its message.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with open(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a kept file is as readable as any other
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        written = 0
        with contextlib.suppress(FileNotFoundError):
            written = os.stat(tmp).st_size  # what fitted before the disk filled
            os.unlink(tmp)
        if is_disk_full(err):
            raise DiskFull(path, max(size_hint or 0, written) or None, free_bytes(path)) from err
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: a crash leaves the old file or the new one."""
    with atomic_replace(path, "w", size_hint=len(text.encode())) as f:
        f.write(text)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_replace` left for ``path`` when a writer was hard
    killed; return them. Call it only while no other writer of ``path`` can run (e.g. holding
    the run folder's lock). A planted symlink is removed as a link; its target is not touched."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"))
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


# -- append-only record files ---------------------------------------------------------------
def strict_json_value(value):
    """``value`` with every non-finite float (NaN, +-inf) replaced by None and tuples made lists,
    so that it serializes as strict JSON (RFC 8259 has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    return value


def record_line(record: dict) -> bytes:
    """One record as one strict-JSON line (keys sorted, non-finite floats as null)."""
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    return (json.dumps(strict_json_value(record), sort_keys=True, allow_nan=False) + "\n").encode()


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one line of strict JSON to ``path`` (created, with its folder, if
    missing), and fsync it: when this returns, the record survives a crash.

    Writers of one file take turns (an exclusive ``flock`` for the append), so lines never
    interleave. A torn last line -- a writer killed mid-line, whose record was therefore never
    reported written -- is cut off first, so the file stays valid JSON lines; a last line that
    is complete JSON but merely lacks its newline (an edit by hand) is kept and terminated.
    ``path`` must not be a symlink.
    """
    line = record_line(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    created = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        created = size == 0
        if size:
            line = _repair_tail(fd, size, path) + line
        # os.write may write fewer bytes than asked (a signal, a nearly full disk): finish the line.
        view, start = memoryview(line), os.fstat(fd).st_size
        try:
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as err:
            if not is_disk_full(err):
                raise
            os.ftruncate(fd, start)  # leave no partial line: the file as it was
            raise DiskFull(path, len(line), free_bytes(path)) from err
    finally:
        os.close(fd)  # releases the lock
    if created:
        fsync_dir(path.parent)


def _repair_tail(fd: int, size: int, path: Path) -> bytes:
    """Fix an unterminated last line in the file ``fd`` (of ``size`` bytes); return what must be
    written before the next line (b"\\n" if the last line is kept but lacked its newline)."""
    if os.pread(fd, 1, size - 1) == b"\n":
        return b""
    start, chunk = size, 1 << 16
    while start > 0:  # find the start of the last line
        lo = max(0, start - chunk)
        newline = os.pread(fd, start - lo, lo).rfind(b"\n")
        if newline >= 0:
            start = lo + newline + 1
            break
        start = lo
    tail = os.pread(fd, size - start, start)
    try:
        json.loads(tail)
        return b"\n"
    except ValueError:  # torn: the writer died mid-line; its record was never complete
        warnings.warn(f"{path}: dropping a torn last line of {size - start} bytes (an interrupted write)")
        os.ftruncate(fd, start)
        return b""


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every well-formed record (a JSON object per line) in ``path``; [] if it does not exist.

    A line that is not valid JSON (a torn line not yet repaired by the next append, or damage by
    hand) is skipped with a warning naming it, so one bad line never hides the others.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipping a line that is not valid JSON")
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


# -- one writer per folder ------------------------------------------------------------------
LOCK_NAME = ".lock"


class FolderBusy(ValueError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` for the block; :class:`FolderBusy` naming the holder
    (pid, host, start time) if another process holds it.

    The lock is an ``flock`` on ``folder/.lock``: the kernel drops it when the holder exits, however
    it exits (SIGKILL included), so a crashed run never leaves a stale lock to clean up by hand.
    The file itself stays; its text only says who holds or last held the lock.
    """
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:  # e.g. a symlink planted at the lock's name, or a read-only folder
        raise ValueError(f"cannot lock {folder}: {path} ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "an unknown process"
            raise FolderBusy(f"{folder} is in use by another {what} ({holder}); wait for it to finish, "
                             f"or use another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {platform.node()}, started {utc_now()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
