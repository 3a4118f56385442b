"""`longmix mixers` and `longmix show`, run through the CLI entry point."""
import os
import subprocess
import sys

import matplotlib.image
import pytest
import torch

from longmix import mixers, viz
from longmix.cli import main
from longmix.mixers import Taxonomy, TokenMixer, registry


def read_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def assert_nontrivial(image):
    # Many distinct colours: heatmaps were drawn, not an empty canvas.
    pixels = torch.from_numpy(image[..., :3].reshape(-1, 3).copy())
    assert len(torch.unique(pixels, dim=0)) > 50


def test_mixers_prints_every_registered_mixer(capsys):
    assert main(["mixers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "weights", "input-dependent", "causal", "time", "memory"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == set(mixers.available())
    for name, cells in rows.items():
        t = mixers.get_class(name).taxonomy
        assert cells[1:5] == [t.family, "learned" if t.learned else "fixed", "yes" if t.input_dependent else "no",
                              "yes" if t.causal else "no"]
        assert " ".join(cells[5:]) == f"{t.time} {t.memory}"


def test_mixers_markdown(capsys):
    assert main(["mixers", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(mixers.available()) + 2 and all(line.startswith("| ") for line in lines)


def test_show_one_mixer_draws_each_head(tmp_path, capsys):
    out = tmp_path / "softmax.png"
    assert main(["show", "softmax", "--length", "24", "--heads", "4", "--causal", "-o", "window=5",
                 "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    image = read_png(out)
    assert image.shape[1] > 2 * image.shape[0], "four heads side by side"
    assert_nontrivial(image)


def test_show_all_draws_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["show", "all", "--length", "16", "--out", str(out)]) == 0
    assert_nontrivial(read_png(out))


class Nonlinear(TokenMixer):
    taxonomy = Taxonomy("mlp", learned=True, input_dependent=True, causal=False, time="O(L)", memory="O(L)")

    def _forward(self, x):
        return torch.tanh(x)

    def _reference(self, x):
        return torch.tanh(x)

    def _mixing_matrix(self, x):
        raise NotImplementedError("token mixing is nonlinear")


def test_show_all_explains_a_missing_mixing_matrix(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "nonlinear-test", Nonlinear)
    picture = viz.mixing_picture("nonlinear-test", length=8, dim=4, heads=1)
    assert picture.matrices is None and picture.reason == "token mixing is nonlinear"
    out = viz.plot_all(tmp_path / "grid.png", names=["local", "nonlinear-test"], length=8, dim=4, heads=1)
    assert_nontrivial(read_png(out))


def test_show_unknown_name_lists_valid_names(tmp_path, capsys):
    assert main(["show", "no-such-mixer", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no-such-mixer" in err and "valid names" in err and "softmax" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("folder", ["missing", "a-file"])
def test_show_unwritable_out_is_a_clear_error(tmp_path, capsys, folder):
    (tmp_path / "a-file").write_text("not a directory")
    assert main(["show", "softmax", "--out", str(tmp_path / folder / "x.png")]) == 2
    assert "--out" in capsys.readouterr().err


def test_show_bad_option_is_a_clear_error(tmp_path, capsys):
    assert main(["show", "softmax", "-o", "window=0", "--out", str(tmp_path / "x.png")]) == 2
    assert "window" in capsys.readouterr().err


def test_show_without_an_extension_prints_the_file_it_wrote(tmp_path, capsys):
    assert main(["show", "s4d", "--out", str(tmp_path / "noext")]) == 0
    assert (tmp_path / "noext.png").is_file()
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'noext.png'}"


@pytest.mark.parametrize("length", [0, 100_000])
def test_show_refuses_lengths_it_cannot_draw(tmp_path, capsys, length):
    assert main(["show", "softmax", "--length", str(length), "--out", str(tmp_path / "x.png")]) == 2
    assert "--length must be between 1 and 4096" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("torchrun", [False, True])
def test_the_executable_exits_a_torchrun_rank_without_teardown_and_loses_no_output(torchrun):
    """A torchrun rank leaves by os._exit (gloo's C++ teardown could abort it after its work was
    done); what it printed still arrives, and so does its exit code. Elsewhere: a normal exit."""
    code = ("import atexit, sys; atexit.register(print, 'teardown ran'); sys.argv = ['longmix', 'mixers']; "
            "from longmix.cli import entry; entry()")
    rank_env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    env = {k: v for k, v in os.environ.items() if k not in rank_env}
    done = subprocess.run([sys.executable, "-c", code], env={**env, **(rank_env if torchrun else {})},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "softmax" in done.stdout and "mamba" in done.stdout
    assert ("teardown ran" in done.stdout) is not torchrun
