"""``transformers`` is optional: without it, every longmix module but ``longmix.hf`` imports, and
``import longmix.hf`` raises an ImportError saying what to install.

Absence is simulated in a fresh interpreter by a meta-path finder that refuses ``transformers``
(and its submodules), as a machine without the package would."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import longmix

SRC = str(Path(longmix.__file__).resolve().parents[1])

BLOCK = textwrap.dedent("""
    import importlib.abc, sys

    class NoTransformers(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "transformers" or name.startswith("transformers."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTransformers())
    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        del sys.modules[name]
""")


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=240)


def test_every_module_but_hf_imports_without_transformers():
    result = run_python("""
        import importlib, pkgutil
        try:
            import transformers
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("the block did not work")
        import longmix
        names = [m.name for m in pkgutil.walk_packages(longmix.__path__, "longmix.")
                 if not (m.name == "longmix.hf" or m.name.startswith("longmix.hf."))]
        for name in names:
            importlib.import_module(name)
        assert "transformers" not in sys.modules
        print(len(names), "modules imported")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[0]) > 20, result.stdout


def test_longmix_hf_says_what_to_install():
    result = run_python("""
        import longmix
        try:
            import longmix.hf
        except ImportError as err:
            print("ImportError:", err)
        else:
            raise SystemExit("longmix.hf imported without transformers")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pip install 'longmix[hf]'" in result.stdout, result.stdout
