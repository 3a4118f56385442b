"""Pathfinder and Path-X: are the two dots connected by one dashed contour?

Recipe: Linsley et al. 2018, "Learning long-range spatial dependencies with horizontal gated
recurrent units" (the Pathfinder generator, github.com/drewlinsley/pathfinder), as used by the
Long Range Arena (Tay et al. 2021): Pathfinder at 32x32 (1024 tokens), Path-X at 128x128 (16384
tokens). Each image holds two target contours of ``contour_length`` dashes and shorter
distractor contours. Positive: the two endpoint dots sit at the two ends of the same target
contour. Negative: one dot on each target contour. Both classes hold the same contours, so only
the dots' placement differs. Difficulty grows with the contour length (Linsley: 6, 9, 14 dashes;
LRA uses 14, the hardest, for both Pathfinder and Path-X).

Our generator, a faithful simplification vectorised over the batch with numpy:

* a contour is a random walk of dashes: each dash is ``dash_length`` pixels along a direction
  that turns by at most ``max_turn`` radians from the previous dash (smooth contours), after a
  gap of ``gap`` blank pixels; dashes are 1-pixel lines (Linsley: Gabor-like paddles of some
  thickness, anti-aliased, on a 300x300 canvas later resized);
* every contour keeps a clearance from all earlier ones and their dots (more than ``gap + 2``
  pixels, Chebyshev), so contours never touch or cross (Linsley also keeps paddles of different
  snakes apart), except that distractors grown in the same round (of 4) may touch one another;
  a dash that cannot be placed within ``max_turn`` stops a distractor; each target
  contour is tried 8 times in parallel and an example whose targets all failed is redrawn;
* dots are 3x3 squares at contour ends, drawn with their own token.

Ground truth in pixel terms: with links between ink pixels at Chebyshev distance
``<= gap + 1`` (bridging the dash gaps), the connected components of the ink are exactly the
contours; the label is 1 iff the two dots lie in one component. ``tests/tasks`` checks this with
an independent flood fill.

Tokens (``vocab_size = 4``): ``0 pad | 1 background | 2 contour | 3 dot``; the image is flattened
row-major, so ``x[:, -context:]`` sees the bottom ``context / size`` rows.

==================  ====================================  ====================================
parameter           this task (default)                   Linsley 2018 / LRA
==================  ====================================  ====================================
size                32 (``pathx``: 128)                   drawn at 300 px; LRA resizes to 32
                                                          (Pathfinder) and 128 (Path-X)
contour_length      14 dashes                             6, 9 or 14 paddles (LRA: 14)
distractor_length   contour_length // 3                   a fraction of contour_length
num_distractors     size**2 // 256 (4; pathx 64)          enough to clutter the canvas
dash_length, gap    size // 16, size // 32 (2, 1 at 32)   paddle length and margin, in px
max_turn            1.0 rad                               "continuity": max turn per paddle
dash shape          1-px line, no anti-aliasing           Gabor-like paddle with thickness
intensities         3 levels (+ pad)                      256 grey levels
==================  ====================================  ====================================

At 32x32 a 14-dash contour spans 42 pixels, so it must curve: with ``max_turn < 0.8`` most
walks run into the border and generation slows down (lower ``contour_length`` then).

``long_range = True``: the dots are anywhere in the image and the contour between them spans
``contour_length * (dash_length + gap)`` pixels, so deciding connectivity needs most rows.
"""
from __future__ import annotations

import math

import numpy as np

from ..checks import check_int
from .base import Task
from .registry import register

BACKGROUND, CONTOUR, DOT = 1, 2, 3
TRIES = 8  # candidate turns (and start points) per dash
ATTEMPTS = 8  # parallel attempts at a target contour (a walk may run into a wall or a contour)
DISTRACTOR_ROUNDS = 4  # rounds in which the distractors grow (see _draw)
MAX_ROUNDS = 50  # redraw rounds for examples whose target contours could not be completed


class _Walk:
    """One contour per image, grown dash by dash in lockstep over a batch of m images."""

    def __init__(self, points: np.ndarray, ok: np.ndarray):
        self.points = points  # (m, n_points, 2) int (row, col), -1 where not drawn
        self.ok = ok  # (m,) every requested dash was placed

    def ends(self) -> tuple[np.ndarray, np.ndarray]:
        """First and last drawn point (m, 2) of each contour (undefined where nothing drawn)."""
        drawn = self.points[..., 0] >= 0
        last = np.maximum(drawn.sum(1) - 1, 0)
        return self.points[:, 0], self.points[np.arange(len(last)), last]


@register("pathfinder")
class Pathfinder(Task):
    """Binary classification: do the two dots lie on one dashed contour?

    Args:
        seed: base seed of every batch.
        size: image side in pixels (>= 16); ``length = size**2``.
        contour_length: dashes per target contour (the difficulty).
        distractor_length: dashes per distractor contour; default ``max(1, contour_length // 3)``.
        num_distractors: distractor contours; default ``size**2 // 256``.
        dash_length: pixels per dash; default ``max(2, size // 16)``.
        gap: blank pixels between dashes; default ``max(1, size // 32)``.
        max_turn: largest change of direction between dashes, radians, in (0, pi].
    """

    kind = "classify"
    long_range = True
    vocab_size = 4
    num_classes = 2

    def __init__(self, seed: int = 0, size: int = 32, contour_length: int = 14,
                 distractor_length: int | None = None, num_distractors: int | None = None,
                 dash_length: int | None = None, gap: int | None = None, max_turn: float = 1.0):
        super().__init__(seed)
        self.size = check_int("size", size, low=16)
        self.contour_length = check_int("contour_length", contour_length, low=2)
        self.distractor_length, self.num_distractors = distractor_length, num_distractors
        self.dash_length, self.gap = dash_length, gap
        self._distractor_length = check_int(
            "distractor_length", max(1, contour_length // 3) if distractor_length is None else distractor_length)
        self._num_distractors = check_int(
            "num_distractors", size * size // 256 if num_distractors is None else num_distractors, low=0)
        self._dash = check_int("dash_length", max(2, size // 16) if dash_length is None else dash_length)
        self._gap = check_int("gap", max(1, size // 32) if gap is None else gap)
        if isinstance(max_turn, bool) or not isinstance(max_turn, (int, float)) or not 0 < max_turn <= math.pi:
            raise ValueError(f"max_turn must be a float in (0, pi], got {max_turn!r}")
        self.max_turn = float(max_turn)
        span = self.contour_length * (self._dash + self._gap)
        if span > 4 * self.size:
            raise ValueError(f"contour_length * (dash_length + gap) = {span} pixels cannot fit twice "
                             f"in a {size}x{size} image; shorten the contour or enlarge size")
        self.length = self.size * self.size
        #: link radius: ink pixels this close (Chebyshev) belong to one contour
        self.link = self._gap + 1

    # -- contours --------------------------------------------------------------------------------
    def _walk(self, rng, forbidden: np.ndarray, n_dashes: int, attempts: int = 1) -> _Walk:
        """Grow one contour per image (see :meth:`_walk_once`). With ``attempts > 1`` (target
        contours) each image grows that many independent contours in parallel and keeps the first
        one that was completed, if any."""
        if attempts == 1:
            return self._walk_once(rng, forbidden, n_dashes)
        m = len(forbidden)
        walk = self._walk_once(rng, np.repeat(forbidden, attempts, axis=0), n_dashes)
        ok = walk.ok.reshape(m, attempts)
        first = np.arange(m) * attempts + ok.argmax(1)
        return _Walk(walk.points[first], ok.any(1))

    def _walk_once(self, rng, forbidden: np.ndarray, n_dashes: int) -> _Walk:
        """Grow one contour of up to ``n_dashes`` dashes in each image, avoiding ``forbidden``
        (m, size, size) bool. A dash goes to the first of TRIES random turns that stays inside the
        1-pixel border, clear of ``forbidden`` and within ``link`` of the previous dash."""
        m, s, d = len(forbidden), self.size, self._dash
        rows = np.arange(m)
        points = np.full((m, n_dashes * d, 2), -1, dtype=np.int64)
        # Start: the first free pixel among TRIES uniform candidates; direction uniform.
        cand = rng.integers(1, s - 1, size=(m, TRIES, 2))
        free = ~forbidden[rows[:, None], cand[..., 0], cand[..., 1]]
        alive = free.any(1)
        pos = cand[rows, free.argmax(1)].astype(np.float64)
        angle = rng.uniform(0, 2 * np.pi, size=m)
        steps = np.arange(d, dtype=np.float64)
        prev = np.rint(pos).astype(np.int64)
        for k in range(n_dashes):
            if k == 0:  # first dash: any direction, from the start pixel
                turns = rng.uniform(-np.pi, np.pi, size=(m, TRIES))
                offset = steps
            else:
                turns = rng.uniform(-self.max_turn, self.max_turn, size=(m, TRIES))
                offset = steps + self._gap + 1
            theta = angle[:, None] + turns  # (m, TRIES)
            direction = np.stack([np.sin(theta), np.cos(theta)], -1)  # (m, TRIES, 2) as (row, col)
            pts_f = pos[:, None, None, :] + offset[None, None, :, None] * direction[:, :, None, :]
            pts = np.rint(pts_f).astype(np.int64)  # (m, TRIES, d, 2)
            inside = ((pts >= 1) & (pts <= s - 2)).all(-1).all(-1)
            clipped = np.clip(pts, 0, s - 1)
            clear = ~forbidden[rows[:, None, None], clipped[..., 0], clipped[..., 1]].any(-1)
            linked = np.abs(pts[:, :, 0] - prev[:, None]).max(-1) <= self.link
            good = inside & clear & linked
            placed = alive & good.any(1)
            choice = good.argmax(1)
            chosen = pts[rows, choice]  # (m, d, 2)
            points[placed, k * d:(k + 1) * d] = chosen[placed]
            pos = np.where(placed[:, None], pts_f[rows, choice, -1], pos)
            prev = np.where(placed[:, None], chosen[:, -1], prev)
            angle = np.where(placed, theta[rows, choice], angle)
            alive = placed
        return _Walk(points, alive)

    def _reserve(self, walk: _Walk, forbidden: np.ndarray, with_ends: bool) -> None:
        """Add the clearance zone of a contour (and of 3x3 dots at both its ends) to
        ``forbidden``: every pixel within ``link + 1`` of it, so a later contour, or a dot later
        drawn on it, stays more than ``link`` pixels away."""
        m, s = forbidden.shape[0], self.size
        ink = np.zeros((m, s, s), dtype=bool)
        _paint(ink, walk.points, True)
        if with_ends:
            for end in walk.ends():
                _paint(ink, _square(end), True)
        forbidden |= _dilate(ink, self.link + 1)

    def _draw(self, rng, m: int):
        """m candidate images: (images (m, s, s) int64, labels (m,), ok (m,) bool)."""
        s = self.size
        forbidden = np.zeros((m, s, s), dtype=bool)
        a = self._walk(rng, forbidden, self.contour_length, ATTEMPTS)
        self._reserve(a, forbidden, with_ends=True)
        b = self._walk(rng, forbidden, self.contour_length, ATTEMPTS)
        self._reserve(b, forbidden, with_ends=True)
        image = np.full((m, s, s), BACKGROUND, dtype=np.int64)
        _paint(image, a.points, CONTOUR)
        _paint(image, b.points, CONTOUR)
        # Distractors grow in a few rounds, all of a round at once (one walk over m * group
        # images): they keep clear of the targets and of earlier rounds; two of the same round
        # may touch, which is harmless, as neither links to a target.
        for group in np.array_split(np.arange(self._num_distractors), DISTRACTOR_ROUNDS):
            if len(group) == 0:
                continue
            c = self._walk(rng, np.repeat(forbidden, len(group), axis=0), self._distractor_length)
            c = _Walk(c.points.reshape(m, -1, 2), c.ok)
            self._reserve(c, forbidden, with_ends=False)
            _paint(image, c.points, CONTOUR)
        a_start, a_end = a.ends()
        b_start, b_end = b.ends()
        label = rng.integers(0, 2, size=m)
        # Positive: both ends of A. Negative: a random end of A and a random end of B.
        pick_a, pick_b = rng.integers(0, 2, size=(2, m, 1)).astype(bool)
        dot1 = np.where(label[:, None] == 1, a_start, np.where(pick_a, a_start, a_end))
        dot2 = np.where(label[:, None] == 1, a_end, np.where(pick_b, b_start, b_end))
        _paint(image, _square(dot1), DOT)
        _paint(image, _square(dot2), DOT)
        # The two dots of a positive must not merge into one blob (A may curl back on itself).
        apart = np.abs(a_start - a_end).max(-1) >= 4
        return image, label, a.ok & b.ok & apart

    def examples(self, rng: np.random.Generator, batch_size: int):
        images, labels, have = [], [], 0
        for _ in range(MAX_ROUNDS):
            m = batch_size - have
            image, label, ok = self._draw(rng, m + m // 2 + 4)  # oversample: some get redrawn
            images.append(image[ok][:m])
            labels.append(label[ok][:m])
            have += len(labels[-1])
            if have == batch_size:
                return np.concatenate(images).reshape(batch_size, -1), np.concatenate(labels)
        raise RuntimeError(f"could not place two contours of {self.contour_length} dashes in "
                           f"{MAX_ROUNDS} rounds; lower contour_length or num_distractors")


@register("pathx")
class PathX(Pathfinder):
    """Path-X: Pathfinder at 128x128 (16384 tokens); same parameters, larger defaults."""

    def __init__(self, seed: int = 0, size: int = 128, contour_length: int = 14,
                 distractor_length: int | None = None, num_distractors: int | None = None,
                 dash_length: int | None = None, gap: int | None = None, max_turn: float = 1.0):
        super().__init__(seed, size, contour_length, distractor_length, num_distractors,
                         dash_length, gap, max_turn)


def _square(center: np.ndarray) -> np.ndarray:
    """The 9 pixels (m, 9, 2) of 3x3 squares around centers (m, 2)."""
    offsets = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(9, 2)
    return center[:, None, :] + offsets[None]


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Dilation of a bool mask (m, s, s) by a (2r+1)^2 square: separable ORs of shifted slices."""
    out = mask.copy()
    for axis in (1, 2):
        src, out = out, out.copy()
        n = src.shape[axis]
        for shift in range(1, min(r, n - 1) + 1):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, n - shift), slice(shift, n)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


def _paint(canvas: np.ndarray, points: np.ndarray, value) -> None:
    """canvas[i, r, c] = value for every (r, c) in points[i] (rows of -1 are skipped)."""
    m, n = points.shape[:2]
    rows = np.broadcast_to(np.arange(m)[:, None], (m, n))
    keep = points[..., 0] >= 0
    canvas[rows[keep], points[..., 0][keep], points[..., 1][keep]] = value
