"""Pictures of what token mixers do to a sequence: their (L x L) mixing matrices as heatmaps.

Row t of a mixing matrix holds the weights with which output position t reads every input
position, so attention shows a dense (or banded, block-sparse) pattern, convolutions and SSMs
a Toeplitz one, the DFT a periodic one. Used by ``longmix show``; matplotlib runs on the Agg
backend (no display needed).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .plotting import pyplot

#: At most this many heads/groups are drawn for one mixer (channel-wise mixers have dim groups).
MAX_PANELS = 8


@dataclass
class MixingPicture:
    """A mixer's mixing matrix for one random input, ready to draw."""

    name: str
    title: str
    matrices: torch.Tensor | None  # (groups, L, L) of the first batch element, or None
    reason: str = ""  # why there is no matrix (NotImplementedError's message)


def describe(mixer) -> str:
    """One line: the mixer's place in the taxonomy."""
    t = mixer.taxonomy
    return (f"{t.family}, {'learned' if t.learned else 'fixed'}, "
            f"{'input-dependent' if t.input_dependent else 'input-independent'}, "
            f"{'causal' if mixer.causal else 'non-causal'}, time {t.time}, memory {t.memory}")


def mixing_picture(name: str, length: int = 64, dim: int = 16, heads: int = 2, causal: bool = False,
                   seed: int = 0, options: dict | None = None) -> MixingPicture:
    """Build mixer ``name`` (max_len=length, constructor ``options``) with seed ``seed`` and compute
    its mixing matrix on a random input x ~ N(0, 1) of shape (1, length, dim). ``causal`` is
    dropped (and said so in the title) for mixers that cannot be causal."""
    from . import mixers

    cls = mixers.get_class(name)
    can_be_causal = causal and cls.taxonomy.causal
    torch.manual_seed(seed)
    mixer = mixers.build(name, dim, heads=heads, causal=can_be_causal, max_len=length,
                         **(options or {})).double().eval()
    x = torch.randn(1, length, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    title = f"{name}: {describe(mixer)}"
    if options:
        title += "\n" + ", ".join(f"{k}={v!r}" for k, v in options.items())
    if causal and not can_be_causal:
        title += " (cannot be causal)"
    try:
        with torch.no_grad():
            matrices = mixer.mixing_matrix(x)[0]
    except NotImplementedError as error:
        return MixingPicture(name, title, None, str(error) or "no mixing matrix")
    return MixingPicture(name, title, matrices.float())


def _draw(ax, matrix: torch.Tensor, label: str, fig):
    """Heatmap of one (L, L) matrix: sequential colours if it is >= 0, else diverging around 0."""
    m = matrix.numpy()
    if (m >= 0).all():
        image = ax.imshow(m, cmap="magma", vmin=0, interpolation="nearest")
    else:
        limit = float(abs(m).max()) or 1.0
        image = ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_title(label, fontsize=8)
    ax.set_xlabel("input position s", fontsize=7)
    ax.set_ylabel("output position t", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)


def _draw_reason(ax, name: str, reason: str):
    import textwrap

    ax.text(0.5, 0.5, f"{name}\n\n" + textwrap.fill(reason, 32), ha="center", va="center",
            fontsize=7, wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def _figure(rows: int, cols: int):
    plt = pyplot()

    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows + 0.4), squeeze=False,
                             layout="constrained")  # places the title and colorbars without overlap
    return plt, fig, axes


def _save(plt, fig, out: Path, title: str, fontsize: int) -> Path:
    out = Path(out)
    fig.suptitle(title, fontsize=fontsize)
    try:
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out


def plot_mixer(name: str, out: str | Path, length: int = 64, dim: int = 16, heads: int = 2,
               causal: bool = False, seed: int = 0, options: dict | None = None) -> Path:
    """Draw one mixer's mixing matrix per head/group (first MAX_PANELS) to the PNG ``out``.
    ``options`` are passed to the mixer's constructor (e.g. ``{"window": 8}``)."""
    picture = mixing_picture(name, length, dim, heads, causal, seed, options)
    if picture.matrices is None:
        plt, fig, axes = _figure(1, 1)
        _draw_reason(axes[0, 0], name, picture.reason)
    else:
        groups = picture.matrices.shape[0]
        shown = min(groups, MAX_PANELS)
        plt, fig, axes = _figure(1, shown)
        for g in range(shown):
            _draw(axes[0, g], picture.matrices[g], f"group {g + 1}/{groups}", fig)
    return _save(plt, fig, out, picture.title, fontsize=9)


def plot_all(out: str | Path, names: list[str] | None = None, length: int = 64, dim: int = 16, heads: int = 2,
             causal: bool = False, seed: int = 0) -> Path:
    """One panel per mixer (its first head/group), one row per family, to the PNG ``out``."""
    from . import mixers

    names = mixers.available() if names is None else names
    if not names:
        raise ValueError("plot_all: names must list at least one mixer, got an empty list")
    by_family: dict[str, list[str]] = {}
    for name in names:
        by_family.setdefault(mixers.get_class(name).taxonomy.family, []).append(name)
    families = [f for f in mixers.FAMILIES if f in by_family]
    cols = max(len(v) for v in by_family.values())
    # Compute every picture before opening the figure: a mixer that rejects the settings (e.g.
    # dim not divisible by heads) raises here, and no half-drawn figure is left open.
    pictures = {f: [mixing_picture(n, length, dim, heads, causal, seed) for n in by_family[f]]
                for f in families}
    plt, fig, axes = _figure(len(families), cols)
    for row, family in enumerate(families):
        for col in range(cols):
            ax = axes[row, col]
            if col >= len(pictures[family]):
                ax.set_axis_off()
                continue
            picture = pictures[family][col]
            if picture.matrices is None:
                _draw_reason(ax, picture.name, picture.reason)
            else:
                t = mixers.get_class(picture.name).taxonomy
                label = (f"{picture.name} [{family}]\n{'learned' if t.learned else 'fixed'}, "
                         f"{'input-dependent' if t.input_dependent else 'input-independent'}\n"
                         f"time {t.time}, memory {t.memory}")
                _draw(ax, picture.matrices[0], label, fig)
    title = (f"mixing matrices, L={length}, dim={dim}, heads={heads}, first group, seed {seed}"
             f"{', causal where possible' if causal else ''}")
    return _save(plt, fig, out, title, fontsize=10)
