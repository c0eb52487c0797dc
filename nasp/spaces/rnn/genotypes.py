"""Recurrent-cell genotypes: the DARTS recurrent cell as data, conversions to and from the core genotype.

A recurrent genotype lists, for intermediate node j = 1..N (in order), ``(activation, predecessor)`` with the
predecessor in 0..j-1 (node 0 is the highway input node), and ``concat``: the nodes whose mean is the cell
output (DARTS: all of 1..8). The published cells below are data (the DARTS paper's PTB cells, first and
second order); they are never produced by evaluating text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...genotype import Choice, Genotype, JsonGenotype

__all__ = ["ACTIVATION_NAMES", "PRIMITIVES_DARTS", "PRIMITIVES_NASP", "RNNGenotype", "GENOTYPES", "DARTS_V1",
           "DARTS_V2", "row_index", "row_pairs", "MATRIX"]

ACTIVATION_NAMES = ("tanh", "relu", "sigmoid", "identity")
PRIMITIVES_DARTS = ("none",) + ACTIVATION_NAMES          # DARTS' op set (the order of its alpha columns)
PRIMITIVES_NASP = ACTIVATION_NAMES                        # without 'none': every node always computes
MATRIX = "cell"                                           # name of the alpha matrix


def row_pairs(num_nodes: int) -> list[tuple[int, int]]:
    """(predecessor i, node j) of every alpha row, grouped by j: j = 1..num_nodes, i = 0..j-1."""
    return [(i, j) for j in range(1, num_nodes + 1) for i in range(j)]


def row_index(i: int, j: int) -> int:
    """Row of edge i -> j in :func:`row_pairs` order."""
    if not 0 <= i < j:
        raise ValueError(f"edge {i}->{j}: the predecessor must be in 0..{j - 1}")
    return (j - 1) * j // 2 + i


@dataclass(frozen=True)
class RNNGenotype(JsonGenotype):
    """A recurrent cell: ``recurrent[j-1] = (activation, predecessor)`` for node j; ``concat`` = averaged nodes."""

    recurrent: tuple[tuple[str, int], ...]
    concat: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "recurrent", tuple((str(a), int(p)) for a, p in self.recurrent))
        object.__setattr__(self, "concat", tuple(int(c) for c in self.concat))
        for j, (act, pred) in enumerate(self.recurrent, start=1):
            if act not in ACTIVATION_NAMES:
                raise ValueError(f"node {j}: activation {act!r} is not one of {ACTIVATION_NAMES}")
            if not 0 <= pred < j:
                raise ValueError(f"node {j}: predecessor {pred} must be in 0..{j - 1}")
        if not self.concat or any(not 1 <= c <= self.num_nodes for c in self.concat):
            raise ValueError(f"concat {self.concat} must name nodes in 1..{self.num_nodes}")

    @property
    def num_nodes(self) -> int:
        return len(self.recurrent)

    # ---- core genotype -----------------------------------------------------------------------------------
    def to_core(self) -> Genotype:
        """The core :class:`~nasp.genotype.Genotype` (matrix ``cell``, one kept row per node)."""
        choices = tuple(Choice(row_index(p, j), f"{p}->{j}", act, f"s{p}", f"s{j}")
                        for j, (act, p) in enumerate(self.recurrent, start=1))
        return Genotype(((MATRIX, choices),))

    @classmethod
    def from_core(cls, genotype: Genotype, num_nodes: int | None = None) -> RNNGenotype:
        """From a core genotype of the recurrent space (exactly one kept row per node, no 'none' op)."""
        choices = genotype.choices(MATRIX)
        n = num_nodes or max(int(c.row_name.split("->")[1]) for c in choices)
        per_node: dict[int, tuple[str, int]] = {}
        for c in choices:
            i, j = (int(v) for v in c.row_name.split("->"))
            if j in per_node:
                raise ValueError(f"node {j} has more than one incoming edge in {genotype}")
            if c.op == "none":
                raise ValueError(f"node {j} chose 'none'; derive without 'none' (see derive_rnn)")
            per_node[j] = (c.op, i)
        missing = [j for j in range(1, n + 1) if j not in per_node]
        if missing:
            raise ValueError(f"nodes {missing} have no incoming edge in {genotype}")
        return cls(tuple(per_node[j] for j in range(1, n + 1)), tuple(range(1, n + 1)))

    # ---- JSON ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"recurrent": [list(x) for x in self.recurrent], "concat": list(self.concat)}

    @classmethod
    def from_dict(cls, d: dict) -> RNNGenotype:
        try:
            return cls(tuple(tuple(x) for x in d["recurrent"]), tuple(d["concat"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"a recurrent genotype needs 'recurrent' and 'concat' lists, got {d!r}") from e


# The DARTS paper's Penn Treebank cells (first order: V1, second order: V2), as published.
DARTS_V1 = RNNGenotype((("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1),
                        ("relu", 5), ("relu", 1)), tuple(range(1, 9)))
DARTS_V2 = RNNGenotype((("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5),
                        ("tanh", 3), ("relu", 5)), tuple(range(1, 9)))

GENOTYPES: dict[str, RNNGenotype] = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2}
