"""Discrete architectures: frozen dataclasses, JSON in and out (never ``eval``), derivation and drawing.

A :class:`Genotype` lists, for every alpha matrix, the kept rows and the op chosen on each. Derivation is the
last ``prox_C1`` (same ranking as the search), so the architecture reported is the one that was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .arch import AlphaSpec, ArchParameters

__all__ = ["Choice", "Genotype", "JsonGenotype", "derive", "genotype_from_onehot", "to_dot", "draw"]


class JsonGenotype:
    """JSON in and out (never ``eval``) for genotype dataclasses that define ``to_dict``/``from_dict``."""

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path):
        """Parse JSON text (a string starting with '{') or read a JSON file."""
        is_file = isinstance(text_or_path, Path) or not str(text_or_path).lstrip().startswith("{")
        p = Path(text_or_path)
        if is_file and not p.is_file():
            raise FileNotFoundError(f"genotype file {p} does not exist")
        text = p.read_text() if is_file else str(text_or_path)
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            src = str(p) if is_file else "<string>"
            raise ValueError(f"{src}: not valid genotype JSON at line {e.lineno}: {e.msg}") from e


@dataclass(frozen=True)
class Choice:
    """Row ``row`` (named ``row_name``, optionally an edge source->target) uses op ``op``."""

    row: int
    row_name: str
    op: str
    source: str | None = None
    target: str | None = None


@dataclass(frozen=True)
class Genotype(JsonGenotype):
    """The discrete architecture: ``matrices`` is a tuple of (matrix name, tuple of kept :class:`Choice`)."""

    matrices: tuple[tuple[str, tuple[Choice, ...]], ...]

    def choices(self, name: str) -> tuple[Choice, ...]:
        for n, cs in self.matrices:
            if n == name:
                return cs
        raise KeyError(f"genotype has no matrix {name!r}; it has {[n for n, _ in self.matrices]}")

    def ops(self, name: str) -> dict[int, str]:
        """row index -> op name for the kept rows of ``name``."""
        return {c.row: c.op for c in self.choices(name)}

    def to_dict(self) -> dict:
        return {n: [c.__dict__.copy() for c in cs] for n, cs in self.matrices}

    @classmethod
    def from_dict(cls, d: dict) -> Genotype:
        if not isinstance(d, dict):
            raise ValueError(f"a genotype must be a JSON object of matrix name -> list of choices, got {type(d)}")
        mats = []
        for name, cs in d.items():
            try:
                choices = tuple(Choice(**c) for c in cs)
            except TypeError as e:
                raise ValueError(f"genotype matrix {name!r}: bad choice entry ({e})") from e
            mats.append((name, choices))
        return cls(tuple(mats))

    def __str__(self) -> str:
        parts = []
        for n, cs in self.matrices:
            parts.append(f"{n}: " + ", ".join(f"{c.row_name}={c.op}" for c in cs))
        return "; ".join(parts)


def genotype_from_onehot(specs: dict[str, AlphaSpec], onehot: dict[str, torch.Tensor]) -> Genotype:
    """Genotype of a one-hot architecture (rows that are all zero are dropped)."""
    mats = []
    for name, spec in specs.items():
        w = onehot[name].detach().cpu()
        kept = (w.amax(dim=1) > 0).tolist()
        idx = w.argmax(dim=1).tolist()
        choices = []
        for r, (keep, k) in enumerate(zip(kept, idx, strict=True)):
            if keep:
                src, dst = spec.edges[r] if spec.edges is not None else (None, None)
                choices.append(Choice(r, spec.rows[r], spec.ops[k], src, dst))
        mats.append((name, tuple(choices)))
    return Genotype(tuple(mats))


def derive(arch: ArchParameters) -> Genotype:
    """The final architecture: prox_C1 of the current alphas (same ranking and tie-break as the search)."""
    return genotype_from_onehot(arch.specs, arch.prox_c1())


def to_dot(genotype: Genotype, title: str = "architecture") -> str:
    """Graphviz DOT text: one cluster per matrix; edges source->target labelled by op when known, else a
    row -> op table."""
    lines = [f'digraph "{title}" {{', "  rankdir=LR;", '  node [shape=box, style="rounded,filled", '
             'fillcolor="#eef3fb"];']
    for name, cs in genotype.matrices:
        lines.append(f'  subgraph "cluster_{name}" {{ label="{name}";')
        for c in cs:
            src = c.source if c.source is not None else f"{c.row_name}"
            dst = c.target if c.target is not None else f"{name}_out"
            lines.append(f'    "{name}:{src}" -> "{name}:{dst}" [label="{c.op}"];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(genotype: Genotype, path: str | Path, title: str = "architecture") -> Path:
    """Write the genotype as a picture. Always writes ``<path>.dot``; also a PNG at ``path`` when matplotlib
    is installed. Returns the path written last."""
    path = Path(path)
    dot_path = path.with_suffix(".dot")
    dot_path.write_text(to_dot(genotype, title))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return dot_path
    fig = _draw_matplotlib(genotype, title, plt)
    fig.savefig(path.with_suffix(".png"), dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path.with_suffix(".png")


def _layout(cs: tuple[Choice, ...]) -> tuple[list[str], dict[str, tuple[float, float]]]:
    nodes: list[str] = []
    for c in cs:
        for n in (c.source or c.row_name, c.target or "out"):
            if n not in nodes:
                nodes.append(n)
    pos = {n: (i, (i % 2) * 0.6) for i, n in enumerate(nodes)}
    return nodes, pos


def _draw_matplotlib(genotype: Genotype, title: str, plt):
    n = len(genotype.matrices)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.6 * n), squeeze=False)
    for ax, (name, cs) in zip(axes[:, 0], genotype.matrices, strict=True):
        nodes, pos = _layout(cs)
        for c in cs:
            (x0, y0), (x1, y1) = pos[c.source or c.row_name], pos[c.target or "out"]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=dict(arrowstyle="->", color="#555", connectionstyle="arc3,rad=0.25"))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.15, c.op, ha="center", fontsize=8, color="#a33")
        for node, (x, y) in pos.items():
            ax.text(x, y, node, ha="center", va="center", fontsize=9,
                    bbox=dict(boxstyle="round", fc="#eef3fb", ec="#336"))
        ax.set_xlim(-0.7, max(len(nodes) - 0.3, 1))
        ax.set_ylim(-0.8, 1.4)
        ax.set_title(f"{title}: {name}", fontsize=10)
        ax.axis("off")
    return fig
