"""A small picture of a found interaction function: the data flow and the learned element-wise transforms g."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["interaction_dot", "draw_interaction"]


def interaction_dot(op: str, sides: tuple[str, ...] = ("u", "v")) -> str:
    """Graphviz DOT text of ``y = w^T op(g(u), g(v)[, g(c)])``."""
    names = {"u": "user embedding", "v": "item embedding", "c": "context embedding"}
    lines = ["digraph interaction {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
    for s in sides:
        lines += [f'  {s} [label="{names[s]}"];', f'  g{s} [label="g_{s} (1-8-1 MLP)"];', f"  {s} -> g{s};",
                  f"  g{s} -> op;"]
    lines += [f'  op [label="{op}", shape=ellipse, style=filled, fillcolor="#ffe9b3"];',
              '  head [label="w^T . (unit ball)"];', '  y [label="rating", shape=plaintext];',
              "  op -> head -> y;", "}"]
    return "\n".join(lines) + "\n"


def draw_interaction(model, path: str | Path, title: str | None = None) -> Path:
    """Write ``<path>.dot`` always and ``<path>.png`` (flow + the curves of each g) when matplotlib exists."""
    path = Path(path)
    op = model.names[0] if len(model.names) == 1 else str(model.genotype())
    path.with_suffix(".dot").write_text(interaction_dot(op, model.sides))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return path.with_suffix(".dot")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.2))
    _flow(ax0, op, model.sides)
    x = torch.linspace(-3, 3, 200)
    with torch.no_grad():
        ys = model.g(x.view(1, -1, 1).expand(len(model.sides), -1, 1).to(next(model.parameters()).device))
    for s, y in zip(model.sides, ys.cpu(), strict=True):
        ax1.plot(x.numpy(), y.squeeze(-1).numpy(), label=f"g_{s}")
    ax1.set_title("learned element-wise transforms g", fontsize=10)
    ax1.set_xlabel("embedding value")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    fig.suptitle(title or f"found interaction: {op}", fontsize=11)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _flow(ax, op: str, sides) -> None:
    ys = {s: y for s, y in zip(sides, (0.8, 0.2, 0.5) if len(sides) == 3 else (0.75, 0.25), strict=False)}
    box = dict(boxstyle="round", fc="#eef3fb", ec="#336")
    for s, y in ys.items():
        ax.text(0.05, y, s, ha="center", va="center", bbox=box)
        ax.text(0.3, y, f"g_{s}", ha="center", va="center", bbox=box)
        ax.annotate("", xy=(0.24, y), xytext=(0.1, y), arrowprops=dict(arrowstyle="->"))
        ax.annotate("", xy=(0.55, 0.5), xytext=(0.36, y), arrowprops=dict(arrowstyle="->"))
    ax.text(0.62, 0.5, op, ha="center", va="center", bbox=dict(boxstyle="round", fc="#ffe9b3", ec="#a60"))
    ax.annotate("", xy=(0.9, 0.5), xytext=(0.72, 0.5), arrowprops=dict(arrowstyle="->"))
    ax.text(0.95, 0.5, "y", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")


def draw_alphas(history: list[dict], names: list[str], chosen: str, path: str | Path, top: int = 8) -> Path:
    """``<path>.png``: each candidate's alpha per search epoch (the ``alphas`` of the search log), the chosen op
    drawn bold and marked; with many candidates (tensors) only the ``top`` largest at the end are drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = [h["alphas"]["interaction"][0] for h in history if "alphas" in h]
    epochs = [h["epoch"] for h in history if "alphas" in h]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    if rows:
        last = rows[-1]
        shown = sorted(range(len(names)), key=lambda j: -last[j])[:top]
        if chosen in names and names.index(chosen) not in shown:
            shown.append(names.index(chosen))
        for j in shown:
            bold = names[j] == chosen
            ax.plot(epochs, [r[j] for r in rows], lw=2.6 if bold else 1.2, marker="o" if bold else None, ms=3,
                    label=f"{names[j]} (chosen)" if bold else names[j], zorder=3 if bold else 2)
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("search epoch")
    ax.set_ylabel("alpha")
    ax.set_title(f"architecture weights per epoch; chosen: {chosen}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
