"""Pictures of a recurrent cell: Graphviz ``.dot`` always, a PNG drawn with matplotlib."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .genotypes import RNNGenotype

__all__ = ["to_dot", "draw_rnn"]


def to_dot(geno: RNNGenotype) -> str:
    """The cell as a Graphviz digraph: x_t and h_{t-1} into node 0, one (activation, predecessor) edge per node,
    the mean of the concatenated nodes as h_t."""
    lines = ["digraph rnn_cell {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fillcolor="#cfe3f3"];',
             '  x [label="x_t", fillcolor="#cfe8cf"]; h [label="h_{t-1}", fillcolor="#cfe8cf"];',
             '  out [label="h_t (mean)", fillcolor="#f3e9a8"];', "  x -> 0; h -> 0;"]
    for j, (act, p) in enumerate(geno.recurrent, start=1):
        lines.append(f'  {p} -> {j} [label="{act}"];')
    lines += [f"  {c} -> out [color=gray];" for c in geno.concat]
    return "\n".join(lines + ["}"]) + "\n"


def draw_rnn(geno: RNNGenotype, path: str | Path) -> list[Path]:
    """Write ``<path>.dot`` and ``<path>.png``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dot = path.with_suffix(".dot")
    dot.write_text(to_dot(geno))
    n = len(geno.recurrent)
    pos = {j: (1.6 * j, 0.0) for j in range(n + 1)}
    fig, ax = plt.subplots(figsize=(1.5 * n + 3, 3.6))
    t = np.linspace(0.0, 1.0, 40)[:, None]
    for j, (act, p) in enumerate(geno.recurrent, start=1):
        a, b = np.array(pos[p]), np.array(pos[j])
        lift = 0.0 if j - p == 1 else 0.35 * (j - p)          # arcs over the nodes they skip
        ctrl = (a + b) / 2 + np.array([0.0, 2 * lift])
        curve = (1 - t) ** 2 * a + 2 * (1 - t) * t * ctrl + t ** 2 * b        # quadratic Bezier, data coords
        ax.plot(curve[:-3, 0], curve[:-3, 1], color="#555", lw=1.2)
        ax.annotate("", xy=curve[-3], xytext=curve[-6], arrowprops=dict(arrowstyle="->", color="#555"))
        ax.text(*(curve[20] + np.array([0.0, 0.14])), act, ha="center", va="center", fontsize=8, color="#a33")
    ax.text(-1.4, 0.45, "x_t", ha="center", fontsize=9, bbox=dict(boxstyle="round", fc="#cfe8cf"))
    ax.text(-1.4, -0.45, "h_{t-1}", ha="center", fontsize=9, bbox=dict(boxstyle="round", fc="#cfe8cf"))
    for name, (x, y) in pos.items():
        fc = "#f3e9a8" if name in geno.concat else "#cfe3f3"
        ax.text(x, y, str(name), ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round", fc=fc))
    ax.set_xlim(-2.2, 1.6 * n + 0.8)
    ax.set_ylim(-1.0, 0.8 + 0.35 * max([j - p for j, (_, p) in enumerate(geno.recurrent, start=1)] + [1]))
    ax.set_title("recurrent cell (yellow: nodes averaged into h_t)", fontsize=10)
    ax.axis("off")
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [dot, png]
