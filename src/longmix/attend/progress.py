"""The job's progress bar on rank 0: useful attention flops done on this rank, with an ETA.

A collective call such as ``longmix.parallel.attention`` has no progress callback, and the
kernels in ``longmix.ops`` are pure functions that keep no count. So the job watches the kernel
calls themselves: :class:`WorkCounter` is a torch function mode that, while active on the thread
running the attention, adds the useful flops of every CPU flash attention call it sees (the
kernel every strategy calls for the job's CPU tensors; a causal diagonal block counts as half).
A heartbeat thread reads the count and moves the bar. (A function mode, not a dispatch mode:
entering a dispatch mode imports some 800 modules, ~70 MiB per rank.)
"""
from __future__ import annotations

import contextlib
import sys
import threading

import torch
from torch.overrides import TorchFunctionMode

_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_CALLS = (_FLASH_CPU, _FLASH_CPU.default)


class WorkCounter(TorchFunctionMode):
    """Within ``with WorkCounter() as counter:``, :attr:`flops` is the useful attention flops of
    the CPU flash kernel calls made on this thread so far; readable from any thread."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._flops = 0.0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _FLASH_CPU_CALLS:  # (B, H, L, D) views of q, k, v; then dropout_p, is_causal
            q, k = args[0], args[1]
            causal = args[4] if len(args) > 4 else kwargs.get("is_causal", False)
            b, h, lq, d = q.shape
            lk = k.shape[2]
            pairs = lq * lk / 2 if causal and lq == lk else lq * lk
            self.add(4.0 * b * h * d * pairs)
        return out

    def add(self, flops: float) -> None:
        with self._lock:
            self._flops += flops

    @property
    def flops(self) -> float:
        with self._lock:
            return self._flops


class Progress:
    """tqdm over work units (GFLOP of useful attention on this rank), plus the phase name."""

    def __init__(self, enabled: bool, total_gflop: float):
        from tqdm import tqdm

        # tqdm's default lock is a multiprocessing semaphore; a rank killed on failure leaks it,
        # and the resource tracker then warns at exit. A rank draws its bar alone: a thread lock
        # does. (This process is a rank of the job's own, so the class-level setting is ours.)
        tqdm.set_lock(threading.RLock())
        tty = sys.stderr.isatty()
        self.bar = tqdm(total=max(round(total_gflop), 1), desc="longmix attend", unit="GFLOP",
                        file=sys.stderr, disable=not enabled, mininterval=0.5 if tty else 15.0,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:,}/{total:,} GFLOP "
                                   "[{elapsed}<{remaining}, {rate_fmt}]")
        self.interval = 0.5 if tty else 15.0

    @contextlib.contextmanager
    def phase(self, name: str, counter: WorkCounter | None = None):
        """Name the phase on the bar; with ``counter``, count the block's kernel work and move
        the bar from a heartbeat thread as it grows."""
        self.bar.set_description_str(f"longmix attend: {name}")
        stop = threading.Event()

        def heartbeat():
            while not stop.wait(self.interval):
                self._show(counter)

        thread = threading.Thread(target=heartbeat, daemon=True)
        if counter is not None and not self.bar.disable:
            thread.start()
        try:
            with counter if counter is not None else contextlib.nullcontext():
                yield
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()
            if counter is not None:
                self._show(counter, done=True)

    def _show(self, counter, done: bool = False):
        n = self.bar.total if done else min(round(counter.flops / 1e9), self.bar.total)
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)

    def close(self):
        self.bar.close()
