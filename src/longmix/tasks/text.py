"""Byte-level language modeling on a corpus already on disk: the Python standard library source.

Every machine that runs longmix has its Python's standard library, so this real-text task needs
no download. The corpus is every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]`` (or
under ``root``), walked in sorted order, skipping directories named ``test``, ``tests``,
``idle_test``, ``site-packages``, ``dist-packages`` and ``__pycache__`` (the test suites are half
generated data, and installed packages differ from machine to machine). On CPython 3.11 that is
about 730 files and 12 MB. The corpus depends on the Python version: compare numbers only across
runs whose ``describe()["corpus"]`` fingerprints match.

Splits are BY FILE: a file goes to valid or test when the first 8 bytes of the SHA-1 of its
relative path, read as a fraction of 2**64, fall below ``valid_fraction`` or in the next
``test_fraction``; otherwise to train. A file's split never changes when files are added or
removed, and no file is shared by two splits. Each split is one byte stream (the files
concatenated in sorted order, capped at ``max_bytes``), read once per process and cached.

Tokens are bytes shifted by one, ``token = byte + 1``, so that ``pad_id = 0`` stays reserved:
``vocab_size = 257``.

``batch(split, index, batch_size, context)`` draws ``batch_size`` window END positions ``e``
uniformly in the split's stream, seeded by ``(seed, split, index, batch_size)`` and NOT by the
context, and returns ``x = stream[e - context : e]`` and ``y = stream[e - context + 1 : e + 1]``
(the next bytes). So the last column of ``y`` holds the same byte ``stream[e]`` at every context,
predicted from more or less history; positions before the stream start are ``pad_id`` in both
``x`` and ``y`` (use ``ignore_index=pad_id``; at 12 MB this happens in ~0.05% of windows at
context 8192).

For the trainer: to compare contexts fairly, evaluate the loss on the last few positions only
(e.g. the last 32 columns of ``y``): every context then predicts the very same targets, and only
the amount of history differs. The mean over all positions mixes in targets with little history
and favours no context. Report :func:`bits_per_byte` of that loss.

=================  ==========================================  ================================
aspect             this task (default)                         usual byte-level LM (enwik8)
=================  ==========================================  ================================
corpus             CPython stdlib ``*.py``, ~12 MB             first 100 MB of Wikipedia XML
split              by file, 90/5/5 by path hash                contiguous 90M/5M/5M bytes
vocabulary         257 (bytes + 1, pad 0)                      256 (or 205 used bytes)
metric             bits per byte                               bits per byte (bpc)
context            any; sweep 128 ... 8192                     512 - 8192 (Transformer-XL ...)
=================  ==========================================  ================================

``long_range = False``: most of what predicts a byte of source code is local (the current line
and the enclosing function); a longer history helps by a smaller margin (identifiers, imports and
idioms defined earlier in the file), which is what a context sweep measures.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import sysconfig
from pathlib import Path

import numpy as np
import torch

from ..checks import check_int
from .base import PACKED_STREAM, SPLITS, Task
from .registry import register

EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # split -> (stream, file starts)


def bits_per_byte(loss_nats: float) -> float:
    """Convert a mean cross-entropy per byte in nats to bits per byte."""
    return float(loss_nats) / math.log(2.0)


@functools.lru_cache(maxsize=8)
def corpus_files(root: str) -> tuple[str, ...]:
    """Relative paths (POSIX, sorted) of the corpus' ``*.py`` files under ``root`` (cached)."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        rel = Path(dirpath).relative_to(root)
        found.extend((rel / f).as_posix() for f in filenames if f.endswith(".py"))
    return tuple(sorted(found))


def split_of(relpath: str, valid_fraction: float, test_fraction: float) -> str:
    """The split of a file, from a hash of its relative path (stable across machines)."""
    u = int.from_bytes(hashlib.sha1(relpath.encode()).digest()[:8], "big") / 2.0**64
    if u < valid_fraction:
        return "valid"
    if u < valid_fraction + test_fraction:
        return "test"
    return "train"


@register("text")
class Text(Task):
    """Byte-level next-byte prediction on the Python standard library source (see module doc).

    Args:
        seed: base seed of every batch (which windows are drawn).
        root: corpus directory; default the running Python's stdlib.
        valid_fraction, test_fraction: expected fractions of files in valid and test.
        max_bytes: cap on each split's stream (the first files in sorted order); None = all.
        length: nominal example length, the context a trainer uses by default (any works).
    """

    kind = "lm"
    metric = "bits_per_byte"
    long_range = False
    vocab_size = 257
    num_classes = None

    def __init__(self, seed: int = 0, root: str | None = None, valid_fraction: float = 0.05,
                 test_fraction: float = 0.05, max_bytes: int | None = None, length: int = 1024):
        super().__init__(seed)
        self.root = root
        self._root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
        if not self._root.is_dir():
            raise ValueError(f"root must be an existing directory, got {str(self._root)!r}")
        for name, f in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f < 1.0:
                raise ValueError(f"{name} must be a float in (0, 1), got {f!r}")
        if valid_fraction + test_fraction >= 1.0:
            raise ValueError(f"valid_fraction + test_fraction must be < 1, got {valid_fraction + test_fraction}")
        self.valid_fraction, self.test_fraction = float(valid_fraction), float(test_fraction)
        self.max_bytes = None if max_bytes is None else check_int("max_bytes", max_bytes, low=2)
        self.length = check_int("length", length)

    # -- corpus ----------------------------------------------------------------------------------
    def files(self, split: str) -> list[str]:
        """Relative paths of the files in ``split``, sorted."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [f for f in corpus_files(str(self._root.resolve()))
                if split_of(f, self.valid_fraction, self.test_fraction) == split]

    def stream(self, split: str) -> np.ndarray:
        """The split's bytes as one uint8 array (cached per process)."""
        return self._read(split)[0]

    def file_starts(self, split: str) -> np.ndarray:
        """int64 offsets in :meth:`stream` where each file of ``split`` starts, then the stream's
        length: file i is ``stream[starts[i]:starts[i + 1]]``."""
        return self._read(split)[1]

    def _read(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        key = (str(self._root.resolve()), self.valid_fraction, self.test_fraction, self.max_bytes, split)
        if key not in _CACHE:
            chunks, total = [], 0
            for rel in self.files(split):
                data = (self._root / rel).read_bytes()
                if self.max_bytes is not None:
                    data = data[: self.max_bytes - total]
                chunks.append(np.frombuffer(data, dtype=np.uint8))
                total += len(data)
                if self.max_bytes is not None and total >= self.max_bytes:
                    break
            stream = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
            if len(stream) < 2:
                raise ValueError(f"split {split!r} of the corpus under {str(self._root)!r} has "
                                 f"{len(stream)} bytes; it needs at least 2 (check root and fractions)")
            starts = np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64)
            _CACHE[key] = stream, starts
        return _CACHE[key]

    def fingerprint(self) -> dict:
        """Files, bytes and a digest per split, to tell whether two runs used the same corpus."""
        out = {}
        for split in SPLITS:
            s = self.stream(split)
            out[split] = {"files": len(self.files(split)), "bytes": int(len(s)),
                          "sha1": hashlib.sha1(s.tobytes()).hexdigest()[:12]}
        return out

    def describe(self) -> dict:
        info = super().describe()
        info["corpus"] = self.fingerprint()
        info["params"]["root"] = str(self._root)
        return info

    # -- batches ---------------------------------------------------------------------------------
    def batch(self, split: str, index: int, batch_size: int, context: int):
        """``x`` (batch_size, context) byte tokens and ``y`` (batch_size, context) next-byte
        targets; window ends depend on (seed, split, index, batch_size), not on context."""
        split, index, batch_size, context = self.check_batch_args(split, index, batch_size, context)
        stream = self.stream(split)
        ends = self.rng(split, index, batch_size).integers(1, len(stream), size=batch_size)
        pos = ends[:, None] - context + np.arange(context)  # x positions; y = pos + 1
        return self._gather(stream, pos), self._gather(stream, pos + 1)

    def documents(self, split: str, index: int):
        """Packed batches' documents (see :meth:`Task.documents`): the split's files, each cut into
        pieces of at most ``length`` next-byte pairs, drawn uniformly. A piece's targets stay in
        its file: the last byte of a file predicts nothing, so no target crosses a file boundary."""
        split, index, _, _ = self.check_batch_args(split, index, 1, 1)
        stream, (starts, stops) = self.stream(split), self.pieces(split)
        rng = self.rng(split, index, PACKED_STREAM)
        while True:
            for i in rng.integers(0, len(starts), size=64):
                pos = np.arange(starts[i], stops[i])
                yield self._gather(stream, pos), self._gather(stream, pos + 1)

    def pieces(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(start, stop) stream offsets of the x tokens of every piece of :meth:`documents`."""
        bounds = self.file_starts(split)
        starts, stops = [], []
        for begin, end in zip(bounds[:-1], bounds[1:]):
            piece_starts = np.arange(begin, end - 1, self.length)  # a file of n bytes: n - 1 pairs
            starts.append(piece_starts)
            stops.append(np.minimum(piece_starts + self.length, end - 1))
        starts, stops = np.concatenate(starts), np.concatenate(stops)
        if len(starts) == 0:
            raise ValueError(f"split {split!r} of the corpus has no file of 2 bytes or more to pack")
        return starts, stops

    def _gather(self, stream: np.ndarray, pos: np.ndarray) -> torch.Tensor:
        tokens = stream[np.maximum(pos, 0)].astype(np.int64) + 1
        tokens[pos < 0] = self.pad_id
        return torch.from_numpy(tokens)
