"""Byte-level text: split by file with no leakage, windows drawn from the right split, targets
are the next bytes, window ends independent of the context, bits per byte."""
import math

import pytest
import torch

from longmix import tasks
from longmix.tasks.text import corpus_files, split_of


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small on-disk corpus: 60 files with distinct contents, plus excluded directories."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(60):
        sub = root / f"pkg{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"mod{i}.py").write_text(f"# file {i}\n" + f"x_{i} = {i}\n" * (20 + i))
    for excluded in ("test", "site-packages", "__pycache__"):
        (root / excluded).mkdir()
        (root / excluded / "leak.py").write_text("LEAK = True\n")
    (root / "notes.txt").write_text("not python\n")
    return root


def test_split_by_file_is_disjoint_and_complete(corpus):
    task = tasks.build("text", root=str(corpus), valid_fraction=0.2, test_fraction=0.2)
    files = {split: set(task.files(split)) for split in tasks.SPLITS}
    assert not files["train"] & files["valid"] and not files["train"] & files["test"]
    assert not files["valid"] & files["test"]
    assert set().union(*files.values()) == set(corpus_files(str(corpus.resolve())))
    assert len(set().union(*files.values())) == 60  # excluded dirs and non-.py files are skipped
    assert all(len(f) > 0 for f in files.values())


def test_windows_come_from_their_split(corpus):
    task = tasks.build("text", root=str(corpus), valid_fraction=0.2, test_fraction=0.2)
    for split in tasks.SPLITS:
        names = {int(f.split("mod")[1][:-3]) for f in task.files(split)}
        x, y = task.batch(split, 0, 16, 24)
        for row in x:
            text = bytes((row[row > 0] - 1).tolist()).decode()
            seen = {int(t.split("_")[1].split()[0]) for t in text.split("x")[1:] if "_" in t and " =" in t}
            assert seen <= names


def test_targets_are_next_bytes_and_ends_do_not_depend_on_context(corpus):
    task = tasks.build("text", root=str(corpus))
    x, y = task.batch("train", 2, 8, 64)
    assert torch.equal(x[:, 1:], y[:, :-1])
    stream = task.stream("train")
    for row_x, row_y in zip(x, y):
        window = bytes((torch.cat([row_x, row_y[-1:]]) - 1).tolist())
        assert window in stream.tobytes()
    for context in (1, 16, 200):
        xc, yc = task.batch("train", 2, 8, context)
        common = min(context, 64)
        assert torch.equal(yc[:, -common:], y[:, -common:])  # the same targets, more or less history


def test_windows_before_stream_start_are_padded(corpus):
    task = tasks.build("text", root=str(corpus), max_bytes=50)
    x, y = task.batch("train", 0, 32, 80)  # every window is longer than the stream
    assert (x[:, :30] == task.pad_id).all() and (y[:, :29] == task.pad_id).all()
    stream = task.stream("train").tobytes()
    for row_x, row_y in zip(x, y):
        e = int((row_x != task.pad_id).sum())  # x = stream[e - 80 : e], real from position 0
        assert bytes((row_x[-e:] - 1).tolist()) == stream[:e]
        # y = stream[e - 79 : e + 1]: the first real target is byte 0, predicted from padding.
        assert int((row_y != task.pad_id).sum()) == e + 1
        assert bytes((row_y[-(e + 1):] - 1).tolist()) == stream[:e + 1]


def test_cap_and_fingerprint(corpus):
    task = tasks.build("text", root=str(corpus), max_bytes=1000)
    fp = task.fingerprint()
    assert fp["train"]["bytes"] == 1000 and fp["valid"]["bytes"] <= 1000
    assert tasks.build("text", root=str(corpus), max_bytes=1000).fingerprint() == fp


def test_stdlib_default_corpus_split():
    task = tasks.build("text", max_bytes=100_000)
    files = [set(task.files(s)) for s in tasks.SPLITS]
    assert all(files) and not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert not any("/test/" in f or f.startswith("test/") or "site-packages" in f for f in set().union(*files))
    # The split of a file depends on its path only.
    assert all(split_of(f, 0.05, 0.05) == "valid" for f in files[1])


def test_bits_per_byte():
    assert tasks.bits_per_byte(math.log(2)) == pytest.approx(1.0)
    assert tasks.bits_per_byte(math.log(256)) == pytest.approx(8.0)


def test_documents_are_pieces_of_one_file_whose_targets_stay_in_it(corpus):
    """--pack's documents: every file cut into pieces of at most ``length`` next-byte pairs; a
    piece is bytes [a, b) of one file with targets [a + 1, b + 1), never past the file's end."""
    task = tasks.build("text", root=str(corpus), valid_fraction=0.2, test_fraction=0.2, length=64)
    files = {(corpus / rel).read_bytes() for rel in task.files("valid")}
    stream = task.documents("valid", 3)
    seen = [next(stream) for _ in range(200)]
    lengths = {len(x) for x, _ in seen}
    assert max(lengths) == 64 and min(lengths) < 64  # full pieces and file tails
    for x, y in seen:
        xb, yb = bytes((x - 1).tolist()), bytes((y - 1).tolist())
        assert xb[1:] == yb[:-1]
        assert any((xb + yb[-1:]) in f for f in files)  # x and its last target: one file
    # the pieces tile each file exactly: n bytes give n - 1 pairs
    starts, stops = task.pieces("valid")
    bounds = task.file_starts("valid")
    assert (stops - starts).sum() == sum(int(b - a) - 1 for a, b in zip(bounds[:-1], bounds[1:]))
    again = task.documents("valid", 3)  # deterministic in (seed, split, index)
    assert all(torch.equal(next(again)[0], x) for x, _ in seen[:20])
    assert not torch.equal(next(task.documents("valid", 4))[0], seen[0][0])
