"""fileio: a report is replaced whole or not at all (never through a planted link), records only
grow as strict JSON lines that survive torn writes and concurrent writers, one writer per folder."""
import json
import math
import os
import re
import subprocess
import sys

import pytest

from longmix.fileio import FolderBusy, append_record, atomic_write_text, folder_lock, read_records


def test_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "half \ud800 written")  # a lone surrogate cannot be encoded
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_planted_symlink_at_a_guessable_temporary_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = tmp_path / "report.md"
    planted = [tmp_path / f"report.md.tmp{os.getpid()}", tmp_path / "report.md.tmp", tmp_path / ".report.md.tmp"]
    for link in planted:
        link.symlink_to(victim)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.md", "victim.txt", *(p.name for p in planted)])


# -- append-only records --------------------------------------------------------------------
def strict(line):
    def refuse(token):
        raise ValueError(token)
    return json.loads(line, parse_constant=refuse)


def test_records_are_strict_json_lines(tmp_path):
    path = tmp_path / "sub" / "results.jsonl"  # the folder is created
    append_record(path, {"b": float("nan"), "a": [1.5, float("inf"), (2, -math.inf)], "c": "x"})
    append_record(path, {"n": 1})
    lines = path.read_text().splitlines()
    assert [strict(line) for line in lines] == [{"a": [1.5, None, [2, None]], "b": None, "c": "x"}, {"n": 1}]
    assert read_records(path) == [strict(line) for line in lines]
    with pytest.raises(TypeError, match="record must be a dict"):
        append_record(path, [1])


def test_a_torn_last_line_is_cut_before_the_next_record(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"n": 1}\n{"n": 2, "half": "writ')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="skipping a line that is not valid JSON"):
        assert read_records(path) == [{"n": 1}]  # readers skip it until then
    with pytest.warns(UserWarning, match="results.jsonl: dropping a torn last line of 22 bytes"):
        append_record(path, {"n": 3})
    assert path.read_text() == '{"n": 1}\n{"n": 3}\n'


@pytest.mark.parametrize("before", ['{"n": 1}', '{"n": 0}\n{"n": 1}'])
def test_a_complete_last_line_without_newline_is_kept(tmp_path, before):
    path = tmp_path / "results.jsonl"
    path.write_text(before)  # edited by hand
    append_record(path, {"n": 2})
    assert path.read_text() == before + '\n{"n": 2}\n'


def test_a_torn_line_longer_than_the_read_chunk_is_found(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"n": 1}\n{"long": "' + "x" * 200_000)
    with pytest.warns(UserWarning, match="dropping a torn last line"):
        append_record(path, {"n": 2})
    assert read_records(path) == [{"n": 1}, {"n": 2}]


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "results.jsonl"
    code = ("import sys\nfrom longmix.fileio import append_record\n"
            "for i in range(40): append_record(sys.argv[1], {'w': sys.argv[2], 'i': i, 'pad': 'y' * 5000})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(w)]) for w in range(3)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    records = [strict(line) for line in path.read_text().splitlines()]
    assert sorted((r["w"], r["i"]) for r in records) == [(str(w), i) for w in range(3) for i in range(40)]


def test_a_symlinked_record_file_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "results.jsonl").symlink_to(victim)
    with pytest.raises(OSError):
        append_record(tmp_path / "results.jsonl", {"n": 1})
    assert victim.read_text() == "precious"


# -- folder lock ----------------------------------------------------------------------------
def test_the_folder_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    with folder_lock(tmp_path, "study"):
        text = (tmp_path / ".lock").read_text()
        assert re.fullmatch(rf"pid {os.getpid()} on host .+, started \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n", text)
        with pytest.raises(FolderBusy, match=rf"in use by another study \(pid {os.getpid()} on host"):
            with folder_lock(tmp_path, "study"):
                pass
    with folder_lock(tmp_path, "study"):  # released at the end of the block
        pass


# -- a full disk ----------------------------------------------------------------------------
def fill_after(monkeypatch, room: int):
    """Make os.write take ``room`` more bytes in all, then raise ENOSPC, as a full disk does."""
    import errno

    from longmix import fileio

    real_write, left = os.write, [room]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data)[:left[0]])
        left[0] -= n
        return n

    monkeypatch.setattr(fileio.os, "write", write)


def test_a_full_disk_mid_record_leaves_the_records_as_they_were(tmp_path, monkeypatch):
    from longmix.fileio import DiskFull

    path = tmp_path / "results.jsonl"
    append_record(path, {"run": 1})
    before = path.read_bytes()
    fill_after(monkeypatch, 10)
    record = {"run": 2, "text": "x" * 100}
    with pytest.raises(DiskFull) as info:
        append_record(path, record)
    assert path.read_bytes() == before  # no partial line
    err = info.value
    assert isinstance(err, OSError) and err.errno == 28 and err.path == path
    assert err.needed == len(json.dumps(record, sort_keys=True)) + 1 and err.free is not None
    assert f"writing {path}: it needed about {err.needed} bytes" in str(err)


def test_a_full_disk_mid_report_keeps_the_old_report(tmp_path):
    import errno

    from longmix.fileio import DiskFull, atomic_replace

    path = tmp_path / "report.md"
    path.write_text("old")
    with pytest.raises(DiskFull) as info:
        with atomic_replace(path, "wb", size_hint=5000) as f:
            f.write(b"x" * 3000)
            f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")  # the disk fills partway
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.md"]
    assert info.value.needed == 5000 and f"writing {path}" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_disk_full_survives_pickling():
    import pickle

    from longmix.fileio import DiskFull

    err = pickle.loads(pickle.dumps(DiskFull("/x/y", 10, 3)))
    assert isinstance(err, DiskFull) and err.needed == 10 and err.free == 3 and "writing /x/y" in str(err)
