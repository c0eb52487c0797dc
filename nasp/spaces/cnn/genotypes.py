"""DARTS-style cell genotypes: a frozen dataclass, JSON in and out (never ``eval``), conversion from the core
:class:`nasp.genotype.Genotype`, drawing, and named published cells as data.

A :class:`CellGenotype` lists, for the normal and the reduction cell, two (op, input) pairs per intermediate
node (node i's pairs are entries 2i and 2i+1; input 0 and 1 are the outputs of the two previous cells, input
j >= 2 is intermediate node j - 2), plus the nodes concatenated into the cell output.

Conversion from a search result (:func:`from_core`): per intermediate node the k = 2 kept incoming rows of the
alpha matrix and their ops. With ``derive_rule="prox"`` (NASP; the core's last prox_C1) edges are ranked by
their largest alpha, 'none' included; a kept edge whose op is 'none' stays in the genotype as a 'none' op
(zero contribution). With ``derive_rule="darts"`` (:meth:`CNNSearchSpace.darts_onehot`, DARTS' rule) 'none' is
excluded from both rankings, so it never appears.

Published cells: ``DARTS_V1`` (first order) and ``DARTS_V2`` (second order) of the DARTS paper, and ``NASP`` (alias
``NASP_12OP``), the cell NASP found in its 12-op space. Provenance of ``NASP``: the edge list was transcribed as data
from a public third-party ``genotypes.py`` that names it ``NASP`` and spells the ops as the NASP reference code does
("conv 3x3" for ``conv_3x3``); the NASP paper's own figure could not be checked offline. Two facts corroborate it:
every op lies in NASP's normal/reduction op lists, and at 20 cells / C=36 it has 7.36M parameters (auxiliary head
excluded), the "7.4M" reported for the 12-op space (``tests/test_cnn_genotypes.py``).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...genotype import Genotype, JsonGenotype
from .ops import OPS

__all__ = ["CellGenotype", "DARTS_V1", "DARTS_V2", "NASP_12OP", "GENOTYPES", "from_core", "to_dot", "draw",
           "get_genotype"]

Pair = tuple[str, int]


def _check_cell(name: str, pairs: tuple[Pair, ...], concat: tuple[int, ...]) -> None:
    if len(pairs) % 2 or not pairs:
        raise ValueError(f"{name}: needs two (op, input) pairs per node, got {len(pairs)} pairs")
    steps = len(pairs) // 2
    for n, (op, j) in enumerate(pairs):
        if op not in OPS:
            raise ValueError(f"{name}: unknown op {op!r}; known: {sorted(OPS)}")
        if not 0 <= j < 2 + n // 2:
            raise ValueError(f"{name}: pair {n} ({op!r}, {j}) reads a node that does not exist yet")
    if not concat or any(not 2 <= c < 2 + steps for c in concat):
        raise ValueError(f"{name}_concat {concat} must name intermediate nodes 2..{steps + 1}")


@dataclass(frozen=True)
class CellGenotype(JsonGenotype):
    """Normal and reduction cell as (op, input index) pairs, two per intermediate node."""

    normal: tuple[Pair, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Pair, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self):
        for field_name in ("normal", "reduce"):
            pairs = tuple((str(op), int(j)) for op, j in getattr(self, field_name))
            object.__setattr__(self, field_name, pairs)
            concat = tuple(int(c) for c in getattr(self, f"{field_name}_concat"))
            object.__setattr__(self, f"{field_name}_concat", concat)
            _check_cell(field_name, pairs, concat)

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict:
        return {"normal": [list(p) for p in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [list(p) for p in self.reduce], "reduce_concat": list(self.reduce_concat)}

    @classmethod
    def from_dict(cls, d: dict) -> CellGenotype:
        keys = {"normal", "normal_concat", "reduce", "reduce_concat"}
        if not isinstance(d, dict) or set(d) != keys:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"a cell genotype needs exactly the keys {sorted(keys)}, got {got}")
        return cls(tuple(tuple(p) for p in d["normal"]), tuple(d["normal_concat"]),
                   tuple(tuple(p) for p in d["reduce"]), tuple(d["reduce_concat"]))


def from_core(genotype: Genotype, steps: int = 4) -> CellGenotype:
    """Cell genotype from the core genotype of a :class:`CNNSearchSpace` (matrices "normal" and "reduce"; rows
    ordered node by node, row names "src->dst"). Each node must have exactly two kept rows."""
    cells = {}
    for name in ("normal", "reduce"):
        by_node: dict[int, list[Pair]] = {i: [] for i in range(steps)}
        for c in genotype.choices(name):
            j, i = _row_edge(c.row, steps)
            by_node[i].append((c.op, j))
        pairs = []
        for i in range(steps):
            if len(by_node[i]) != 2:
                raise ValueError(f"{name} node {i} has {len(by_node[i])} kept edges, a DARTS cell needs 2")
            pairs += sorted(by_node[i], key=lambda p: p[1])
        cells[name] = tuple(pairs)
    concat = tuple(range(2, 2 + steps))
    return CellGenotype(cells["normal"], concat, cells["reduce"], concat)


def _row_edge(row: int, steps: int) -> tuple[int, int]:
    """Row index -> (source j, intermediate node i) in the cell's row order."""
    start = 0
    for i in range(steps):
        if row < start + 2 + i:
            return row - start, i
        start += 2 + i
    raise ValueError(f"row {row} is outside a cell with {steps} nodes")


DARTS_V1 = CellGenotype(
    normal=(("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)),
    reduce_concat=(2, 3, 4, 5),
)

DARTS_V2 = CellGenotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
    reduce_concat=(2, 3, 4, 5),
)

#: NASP's cell in its 12-op space (normal ops from NASP_NORMAL_PRIMITIVES, reduction ops from
#: NASP_REDUCE_PRIMITIVES); see the module docstring for where the edge list comes from.
NASP_12OP = CellGenotype(
    normal=(("conv_3x1_1x3", 0), ("conv_3x3", 1), ("dil_conv_3x3", 2), ("conv_3x3", 1),
            ("dil_conv_3x3", 2), ("conv_3x3", 0), ("skip_connect", 0), ("dil_conv_3x3", 3)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_5x5", 1),
            ("skip_connect", 2), ("skip_connect", 3), ("skip_connect", 0), ("skip_connect", 1)),
    reduce_concat=(2, 3, 4, 5),
)

GENOTYPES: dict[str, CellGenotype] = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2,
                                      "NASP": NASP_12OP, "NASP_12OP": NASP_12OP}


def get_genotype(name_or_path: str | Path) -> CellGenotype:
    """A named genotype (``GENOTYPES``), a JSON file or JSON text."""
    if str(name_or_path) in GENOTYPES:
        return GENOTYPES[str(name_or_path)]
    s = str(name_or_path)
    if s.lstrip().startswith("{") or Path(s).is_file():
        return CellGenotype.from_json(s)
    raise ValueError(f"{s!r} is neither a named genotype {sorted(GENOTYPES)} nor a JSON file")


def _node_label(j: int) -> str:
    return ("c_{k-2}", "c_{k-1}")[j] if j < 2 else str(j - 2)


def to_dot(cell: CellGenotype, which: str = "normal") -> str:
    """Graphviz DOT text of one cell ("normal" or "reduce")."""
    pairs, concat = getattr(cell, which), getattr(cell, f"{which}_concat")
    lines = [f'digraph "{which}" {{', "  rankdir=LR;", '  node [style=filled, shape=box];',
             '  "c_{k-2}" [fillcolor=darkseagreen2]; "c_{k-1}" [fillcolor=darkseagreen2];',
             '  "c_{k}" [fillcolor=palegoldenrod];']
    for i in range(len(pairs) // 2):
        lines.append(f'  "{i}" [fillcolor=lightblue];')
    for n, (op, j) in enumerate(pairs):
        lines.append(f'  "{_node_label(j)}" -> "{n // 2}" [label="{op}"];')
    for c in concat:
        lines.append(f'  "{c - 2}" -> "c_{{k}}" [color=gray];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(cell: CellGenotype, path: str | Path) -> list[Path]:
    """Write ``<path>_normal.dot`` / ``<path>_reduce.dot`` always, and PNGs next to them with graphviz's ``dot``
    when it is installed, else with matplotlib when that is installed. Returns the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for which in ("normal", "reduce"):
        dot_path = path.parent / f"{path.stem}_{which}.dot"
        dot_path.write_text(to_dot(cell, which))
        written.append(dot_path)
        png = dot_path.with_suffix(".png")
        if shutil.which("dot"):
            subprocess.run(["dot", "-Tpng", str(dot_path), "-o", str(png)], check=True)
            written.append(png)
        elif _draw_matplotlib(cell, which, png):
            written.append(png)
    return written


def _draw_matplotlib(cell: CellGenotype, which: str, png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    pairs, concat = getattr(cell, which), getattr(cell, f"{which}_concat")
    steps = len(pairs) // 2
    pos = {"c_{k-2}": (0.0, 2.0), "c_{k-1}": (0.0, -0.4), "c_{k}": (2.0 * steps + 1.5, 0.8)}
    for i in range(steps):
        pos[str(i)] = (2.0 * i + 2.0, 0.8 + (0.7 if i % 2 else -0.7))
    fig, ax = plt.subplots(figsize=(2.6 * steps + 2.5, 4.5))
    for n, (op, j) in enumerate(pairs):
        (x0, y0), (x1, y1) = pos[_node_label(j)], pos[str(n // 2)]
        rad = 0.2 if n % 2 else -0.2
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="#555", shrinkA=12, shrinkB=12,
                                    connectionstyle=f"arc3,rad={rad}"))
        # the midpoint of matplotlib's arc3 curve: chord midpoint + rad / 2 * (dy, -dx)
        mx, my = (x0 + x1) / 2 + rad / 2 * (y1 - y0), (y0 + y1) / 2 - rad / 2 * (x1 - x0)
        ax.text(mx, my, op, ha="center", va="center", fontsize=7, color="#a33",
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    for c in concat:
        (x0, y0), (x1, y1) = pos[str(c - 2)], pos["c_{k}"]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="#bbb"))
    for name, (x, y) in pos.items():
        colour = "#cfe8cf" if name.startswith("c_{k-") else ("#f3e9a8" if name == "c_{k}" else "#cfe3f3")
        ax.text(x, y, name, ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round", fc=colour, ec="#336"))
    ax.set_xlim(-0.8, 2.0 * steps + 2.3)
    ax.set_ylim(-1.0, 2.6)
    ax.set_title(f"{which} cell", fontsize=10)
    ax.axis("off")
    fig.savefig(png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True
