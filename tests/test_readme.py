"""Every Python example in the README runs as a user would run it: each block is saved as a
script and run in a fresh process (a block whose first line is ``# torchrun --nproc-per-node N
...`` under torchrun with N local ranks), at sizes that fit in a few GB."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TORCHRUN = re.compile(r"#\s*torchrun --nproc-per-node (\d+)\b")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def command(block: str, path: Path) -> list[str]:
    first = block.lstrip().splitlines()[0]
    launch = TORCHRUN.match(first)
    if launch:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={launch.group(1)}", str(path)]
    return [sys.executable, str(path)]


def test_the_readme_has_examples_for_each_part():
    assert len(BLOCKS) >= 4
    assert any(TORCHRUN.match(b.lstrip().splitlines()[0]) for b in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, tmp_path):
    block = BLOCKS[index]
    path = tmp_path / f"readme_example_{index}.py"
    path.write_text(block, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command(block, path), cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, f"README example {index} failed:\n{block}\n--- stderr ---\n{out.stderr[-4000:]}"
