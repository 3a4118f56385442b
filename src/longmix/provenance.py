"""Where a record came from: the one timestamp format and the code version behind it.

Every record longmix keeps (a training result, a study line, a benchmark point) carries
``utc_now()`` and ``provenance()``, so a figure can always be traced to the code that made it.
A dirty tree is named by ``git describe --dirty`` *and* a hash of its diff, because "dirty"
alone cannot tell two different uncommitted states apart.

Both are best effort: without git, outside a checkout (an installed wheel) or on a git error,
the git fields are None and nothing is raised -- a missing provenance must never lose a result.
"""
from __future__ import annotations

import datetime
import hashlib
import subprocess
from pathlib import Path

#: The package's own directory: git runs here, so records name longmix's version, not the caller's.
_PACKAGE = Path(__file__).resolve().parent
_GIT_TIMEOUT_S = 10
#: Folders of results, not code: a change there does not make the code dirty. A study appends to
#: its own tracked results file, which would otherwise mark every record it writes as dirty.
DATA_PATHS = ("benchmarks/results",)


def utc_now() -> str:
    """Now, in the one timestamp format of every record: UTC ISO-8601 to the second, e.g.
    ``2026-11-29T21:30:05Z`` (sorts as text, parses with ``datetime.fromisoformat``)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(*args: str, cwd: Path) -> bytes | None:
    """git's stdout, or None if git is missing, fails or hangs."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=_GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def provenance(path: str | Path | None = None) -> dict:
    """The code version: ``{"git_describe", "git_commit", "git_dirty", "git_diff_sha256"}``.

    ``git_describe`` is ``git describe --always``, with ``-dirty`` appended when tracked files
    outside :data:`DATA_PATHS` have uncommitted changes; ``git_diff_sha256`` is the sha256 of that
    ``git diff HEAD --binary`` (changed binary files count too) for a dirty tree, else None.
    Untracked files are in neither: add them to git for a record to name them. ``path`` is a
    directory inside the checkout (default: the longmix package). The package must be tracked by
    that checkout: an installed copy inside someone else's repository (a virtualenv in a project)
    would otherwise report that project's version.
    """
    cwd = Path(path) if path is not None else _PACKAGE
    unknown = {"git_describe": None, "git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    if path is None and _git("ls-files", "--error-unmatch", "__init__.py", cwd=cwd) is None:
        return unknown
    describe = _git("describe", "--always", cwd=cwd)
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    diff = _git("diff", "HEAD", "--no-ext-diff", "--binary", "--", ":(top)",
                *(f":(top,exclude){p}" for p in DATA_PATHS), cwd=cwd)
    if describe is None or commit is None or diff is None:
        return unknown
    dirty = bool(diff)
    describe_text = describe.decode().strip() + ("-dirty" if dirty else "")
    diff_hash = hashlib.sha256(diff).hexdigest() if dirty else None
    return {"git_describe": describe_text, "git_commit": commit.decode().strip(), "git_dirty": dirty,
            "git_diff_sha256": diff_hash}
