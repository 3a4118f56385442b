"""Run a function on P local ranks (one process each) in a fresh process group, never hanging.

    results = launch.run_local(fn, nprocs=4, args=(x,), timeout=120)

``fn(group, *args)`` runs on every rank with the group as its first argument; its return values
come back as a list indexed by rank. If any rank raises, dies or the whole run exceeds
``timeout`` seconds, every rank is killed and :class:`RankFailure` names the failing rank and
carries its traceback. Collectives inside get ``collective_timeout`` (gloo/NCCL enforce it), so a
rank waiting on a dead peer errors out instead of waiting forever.

Ranks die with the launcher: each rank asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG`` on Linux) and runs a watchdog thread that polls the launcher's pid (every
other platform, and the case where the parent is the forkserver rather than the launcher). So a
launcher killed by SIGKILL or SIGTERM never leaves ranks computing for minutes, reparented to init.
Results come back over one pipe per rank (no ``multiprocessing.Queue``: its semaphore is what a
killed rank leaked, with a warning at every failed launch).

Ranks start from a *forkserver* where the platform has one (Linux, macOS): the server imports
torch once and each launch forks ready ranks from it, ~0.2 s instead of the seconds every
spawned interpreter spends importing torch (a test suite launches ranks many times). Elsewhere,
or with ``start_method="spawn"``, each rank is a fresh interpreter.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable

import torch.distributed as dist
import torch.multiprocessing as mp

from longmix.checks import check_int


class RankFailure(RuntimeError):
    """A rank raised, died, or the launch timed out. ``exitcode``: the dead rank's exit status
    when one died (a caller can tell a rank that ended itself on purpose from a crash)."""

    def __init__(self, rank: int | None, message: str, exitcode: int | None = None):
        self.rank, self.exitcode = rank, exitcode
        super().__init__(message)

    def summary(self, limit: int = 300) -> str:
        """One line for a table cell: the head ("rank 1 failed:", "timed out after ...") and,
        when a rank raised, its exception line ("ValueError: ..."), which the head alone hides."""
        lines = [ln.strip() for ln in str(self).splitlines() if ln.strip()]
        if not lines:
            return ""
        head = lines[0]
        if head.endswith(":") and len(lines) > 1:  # the payload's first line is "Type: message"
            head = f"{head} {lines[1]}"
        return head[:limit]


def free_port() -> int:
    """A port free now, for a launcher that must be told one (torchrun's --master-port). Another
    process may take it before that launcher binds it; :func:`run_local` does not use this."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rendezvous_store(timeout_s: float) -> dist.TCPStore:
    """The ranks' meeting point, served by the launcher on a port the kernel picks (port 0), so
    no other process can take the port between choosing it and binding it (a free port handed
    to rank 0 to bind could be, and was, taken by a concurrent run)."""
    return dist.TCPStore("127.0.0.1", 0, is_master=True,
                         timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)


# Imported once by the forkserver so that forked ranks start warm; missing ones are skipped.
_PRELOAD = ["torch", "torch.distributed", "longmix.ops", "longmix.parallel"]


def _context(start_method: str | None):
    if start_method is None:
        start_method = ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                        else "spawn")
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)  # no effect once the server runs; harmless
    return ctx


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_WATCHDOG_PERIOD_S = 0.5


def _die_with(launcher_pid: int) -> None:
    """Make this rank exit as soon as the launcher process is gone.

    Two mechanisms, because neither is enough alone: the kernel's parent-death signal is
    immediate but Linux-only and tied to the *parent*, which under the forkserver start method
    is the forkserver (it exits when the launcher does, but only then); the watchdog thread
    works everywhere and watches the launcher itself, within :data:`_WATCHDOG_PERIOD_S`.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still runs
    parent = os.getppid()

    def launcher_alive() -> bool:
        try:
            os.kill(launcher_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, owned by someone else (a reused pid): not ours
            return False
        return os.getppid() == parent  # reparented: our parent (forkserver or launcher) died

    def watch():
        while launcher_alive():
            time.sleep(_WATCHDOG_PERIOD_S)
        os.kill(os.getpid(), signal.SIGKILL)

    if not launcher_alive():  # the launcher died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="longmix-launcher-watchdog", daemon=True).start()


def _worker(rank, nprocs, port, backend, collective_timeout, threads, launcher_pid, fn, args, conn):
    _die_with(launcher_pid)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    try:
        timeout = datetime.timedelta(seconds=collective_timeout)
        store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=rank, world_size=nprocs, timeout=timeout)
        group = dist.group.WORLD
        # Plain pickle copies tensors by value; torch's reductions would share their storage
        # through file descriptors that vanish when this process exits, before the parent reads.
        message = ("ok", pickle.dumps(fn(group, *args)))
    except BaseException as exc:  # report everything, including KeyboardInterrupt/SystemExit
        message = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    try:
        conn.send(message)
    except (BrokenPipeError, OSError):
        pass  # the launcher is gone or gave up on us; nothing to report to
    finally:
        conn.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _root_cause(procs, results, rank, payload) -> RankFailure:
    """A peer's death surfaces on the survivors as a connection error; name the dead rank instead."""
    for _ in range(20):  # up to 2 s for a dying peer's exit code to show
        dead = [r for r, p in enumerate(procs)
                if r not in results and r != rank and p.exitcode not in (None, 0)]
        if dead:
            return RankFailure(dead[0], f"rank {dead[0]} died with exit code "
                                        f"{procs[dead[0]].exitcode}; rank {rank} then failed:\n{payload}",
                               exitcode=procs[dead[0]].exitcode)
        procs[rank].join(timeout=0.1)
    return RankFailure(rank, f"rank {rank} failed:\n{payload}")


def run_local(fn: Callable[..., Any], nprocs: int, args: tuple = (), *, timeout: float = 300.0,
              collective_timeout: float = 60.0, backend: str = "gloo",
              threads_per_rank: int | None = None, start_method: str | None = None) -> list[Any]:
    """Start ``nprocs`` ranks on localhost running ``fn(group, *args)``; return results by rank.

    ``fn`` must be picklable (a module-level function), and a script calling this must guard its
    top level with ``if __name__ == "__main__":`` (ranks re-import the main module). Raises
    :class:`RankFailure` naming the first rank that failed, after killing all ranks.
    ``start_method``: "forkserver" (default where available) or "spawn".
    """
    check_int("nprocs", nprocs)
    if threads_per_rank is None:
        threads_per_rank = max(1, (os.cpu_count() or 1) // nprocs)
    ctx = _context(start_method)
    store = _rendezvous_store(collective_timeout)  # lives until the ranks are joined
    port = store.port
    pipes = [ctx.Pipe(duplex=False) for _ in range(nprocs)]  # (parent's reader, rank's writer)
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(r, nprocs, port, backend, collective_timeout, threads_per_rank,
                               os.getpid(), fn, args, pipes[r][1]))
             for r in range(nprocs)]
    started = []  # the finally below must reach every rank that started, even if a later start fails
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout  # monotonic: a wall-clock jump must not end the wait
    try:
        for p in procs:
            p.start()
            started.append(p)
        for _, writer in pipes:
            writer.close()  # the ranks hold the writers now; EOF then means a rank is gone
        readers = {pipes[r][0]: r for r in range(nprocs)}
        while len(results) < nprocs:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(nprocs)) - set(results))
                raise RankFailure(missing[0] if missing else None,
                                  f"timed out after {timeout:.0f}s waiting for ranks {missing}")
            for reader in multiprocessing.connection.wait(list(readers), timeout=min(remaining, 1.0)):
                rank = readers.pop(reader)
                try:
                    status, payload = reader.recv()
                except (EOFError, OSError):
                    procs[rank].join(timeout=2)
                    raise RankFailure(rank, f"rank {rank} died with exit code "
                                            f"{procs[rank].exitcode} before reporting a result",
                                      exitcode=procs[rank].exitcode) from None
                if status == "error":
                    raise _root_cause(procs, results, rank, payload)
                results[rank] = pickle.loads(payload)
    finally:
        for p in started:
            p.join(timeout=5 if len(results) == nprocs else 0.5)
        for p in started:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for reader, writer in pipes:
            reader.close()
            writer.close()
    return [results[r] for r in range(nprocs)]


@contextlib.contextmanager
def torchrun_group(timeout_s: float):
    """The gloo group torchrun set up (env://), for the body of a ``with`` block, which gets it.

    Every collective waits at most ``timeout_s``. When the body succeeds, the ranks meet once more
    before the group is torn down, so that none tears gloo down while a peer still uses it (a
    rank that does can abort at exit, std::terminate, after its work is done); the executable's
    exit (``longmix.cli.entry``) skips the C++ teardown that still aborts now and then. When the
    body raises, the group is torn down at once (a peer may never reach that meeting)."""
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield dist.group.WORLD
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    """True when torchrun (or any env:// launcher) started this process as one rank of a group:
    then a command joins that group (``init_process_group()`` reads these variables) instead of
    spawning ranks of its own."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def torchrun_world_size(procs: int | None) -> int | None:
    """torchrun's WORLD_SIZE when this process is one of its ranks (:func:`launched_by_torchrun`),
    else None. ValueError when ``procs``, a process count the user also gave, disagrees with it."""
    if not launched_by_torchrun():
        return None
    world = int(os.environ["WORLD_SIZE"])
    if procs is not None and procs != world:
        raise ValueError(f"--procs {procs} disagrees with torchrun's WORLD_SIZE={world}; "
                         f"leave --procs out under torchrun")
    return world
