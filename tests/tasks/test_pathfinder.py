"""Pathfinder / Path-X: the label agrees with connectivity computed by an independent flood fill
on the rendered image; classes are balanced; the images look like the recipe says."""
from collections import deque

import numpy as np
import pytest

from longmix import tasks
from longmix.tasks.pathfinder import BACKGROUND, CONTOUR, DOT


def components(mask: np.ndarray, radius: int) -> np.ndarray:
    """Label connected components of a bool image; pixels within Chebyshev ``radius`` link."""
    labels = np.zeros(mask.shape, dtype=np.int64)
    h, w = mask.shape
    current = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        current += 1
        labels[start] = current
        queue = deque([start])
        while queue:
            r, c = queue.popleft()
            for rr in range(max(r - radius, 0), min(r + radius + 1, h)):
                for cc in range(max(c - radius, 0), min(c + radius + 1, w)):
                    if mask[rr, cc] and not labels[rr, cc]:
                        labels[rr, cc] = current
                        queue.append((rr, cc))
    return labels


def check_image(image: np.ndarray, label: int, link: int):
    assert set(np.unique(image)) <= {BACKGROUND, CONTOUR, DOT}
    dots = components(image == DOT, 1)
    assert dots.max() == 2, "exactly two separate dots"
    ink = components(image != BACKGROUND, link)
    first = set(ink[dots == 1].tolist())
    second = set(ink[dots == 2].tolist())
    assert len(first) == len(second) == 1
    assert (first == second) == bool(label)
    # Distractors are present: more ink components than the target contours.
    return ink.max()


@pytest.mark.parametrize("params", [dict(), dict(contour_length=6, max_turn=0.5)])
def test_label_is_connectivity_by_flood_fill(params):
    task = tasks.build("pathfinder", seed=4, **params)
    x, y = task.batch("train", 0, 24, task.length)
    counts = [check_image(row.view(task.size, task.size).numpy(), int(label), task.link)
              for row, label in zip(x, y)]
    assert min(counts) >= 3  # two target contours (one if both dots are on it) + distractors


def test_pathx_label_is_connectivity():
    task = tasks.build("pathx")  # default: 64 distractors grown in 4 rounds
    assert task.length == 128 * 128
    x, y = task.batch("valid", 0, 2, task.length)
    for row, label in zip(x, y):
        check_image(row.view(128, 128).numpy(), int(label), task.link)


def test_classes_balanced():
    task = tasks.build("pathfinder", contour_length=6)
    y = np.concatenate([task.batch("train", i, 64, 8)[1].numpy() for i in range(4)])
    assert abs(y.mean() - 0.5) < 4 * 0.5 / np.sqrt(len(y))


def test_target_contours_have_the_requested_length():
    # Contour pixels = 2 targets * contour_length * dash_length at most (dots may cover some),
    # plus distractors; with no distractors, exactly the two targets remain.
    task = tasks.build("pathfinder", contour_length=9, num_distractors=0)
    x, _ = task.batch("test", 0, 16, task.length)
    ink = (x != BACKGROUND).sum(1).numpy()
    per_contour = 9 * task._dash
    assert (ink <= 2 * per_contour + 2 * 9).all() and (ink >= per_contour).all()
