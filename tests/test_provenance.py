"""provenance(): the code version of a record (a dirty tree named by the hash of its diff), and
nothing raised when git or the repository is missing; utc_now(): the one timestamp format."""
import datetime
import hashlib
import re
import subprocess

from longmix.provenance import provenance, utc_now


def git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          check=True, capture_output=True).stdout


def test_utc_now_is_iso_8601_utc_to_the_second():
    text = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text)
    parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - parsed).total_seconds()) < 5


def test_a_clean_then_a_dirty_tree(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "commit", "-q", "-m", "first")
    head = git(tmp_path, "rev-parse", "HEAD").decode().strip()
    assert provenance(tmp_path) == {"git_describe": head[:7], "git_commit": head, "git_dirty": False,
                                    "git_diff_sha256": None}
    (tmp_path / "a.txt").write_text("two\n")
    dirty = provenance(tmp_path)
    assert dirty["git_describe"] == head[:7] + "-dirty" and dirty["git_dirty"] is True
    assert dirty["git_diff_sha256"] == hashlib.sha256(git(tmp_path, "diff", "HEAD", "--binary")).hexdigest()
    (tmp_path / "a.txt").write_text("three\n")  # another uncommitted state, another hash
    assert provenance(tmp_path)["git_diff_sha256"] != dirty["git_diff_sha256"]


def test_results_are_data_not_code(tmp_path):
    """A study appends to its own tracked results file: that must not make its records dirty."""
    git(tmp_path, "init", "-q")
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "r.jsonl").write_text("{}\n")
    (tmp_path / "a.txt").write_text("one\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    (results / "r.jsonl").write_text("{}\n{}\n")
    inside = provenance(results)  # also when asked from inside the results folder
    assert inside["git_dirty"] is False and not inside["git_describe"].endswith("-dirty")
    (tmp_path / "a.txt").write_text("two\n")
    dirty = provenance(results)
    assert dirty["git_dirty"] is True
    assert dirty["git_diff_sha256"] == hashlib.sha256(git(tmp_path, "diff", "HEAD", "--binary", "--", "a.txt")).hexdigest()


def test_no_repository_or_no_git_gives_nones(tmp_path, monkeypatch):
    nothing = {"git_describe": None, "git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    assert provenance(tmp_path) == nothing  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # git cannot be found
    assert provenance() == nothing
