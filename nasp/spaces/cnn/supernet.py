"""The CNN search cell and search network (the supernet) over either op set.

Cell: two input nodes (outputs of the two previous cells, preprocessed to C channels), ``steps`` intermediate
nodes, an edge from every earlier node to every intermediate node (14 edges for 4 nodes), output = concat of
the last ``multiplier`` intermediate nodes. One alpha matrix per cell type ("normal", "reduce"), one row per
edge, grouped by target node with k = 2 rows kept per group (the DARTS cell). Reduction cells sit at 1/3 and
2/3 of the depth and use stride 2 on the edges leaving the input nodes.

Modes (see :class:`nasp.arch.ArchView`): SPARSE and DENSE edges go through :func:`nasp.mixed.mix` (SPARSE runs
only the selected op of each kept edge: the NASP weight step; DENSE is the DARTS mixed op; 'none' is never run).
NASP mode (the alpha step) has its own, stronger implementation of the same exact rule: the selected op runs
with its graph, and every other op runs inside the backward pass (:mod:`.alpha_grad`), once
g = dL/d(edge out) is known, and is reduced at once to dL/dĀ_k = <g, op_k(x)>; no output of a non-selected op
is stored between forward and backward, so the alpha step's peak memory stays close to that of the sparse
network. Work shared by edges is done once, during the backward pass: the parameter-free ops and the leading
ReLU of the parametric ops once per source node; every ReLU/conv/BN op type as ONE batched call over all the
cell's edges of one stride (:mod:`.batched`; computed when the first of them is reduced, each edge's output
held until that edge is reduced). Tests check the result against autograd
on the one-hot matrix and against the unbatched computation (BN running statistics included).
:attr:`CNNSearchSpace.alpha_subbatch` (off by default) is the "cheaper alpha-gradient estimate": the
non-selected ops run on the first ``alpha_subbatch`` samples only and their term is rescaled by B / b (BN
statistics then come from the sub-batch, so it is an estimate).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...arch import NASP, SPARSE, AlphaSpec, ArchParameters, ArchView
from ...genotype import Genotype, genotype_from_onehot
from ...mixed import mix
from ...regularizers import cost_matrix
from ...space import SearchSpace, register_space
from .alpha_grad import DeferredAlphaGrad, PendingCache, inner, split_edges
from .batched import batchable, run_batched
from .ops import OP_SETS, FactorizedReduce, ReLUConvBN, after_relu, search_op, starts_with_relu

__all__ = ["SearchCell", "CNNSearchSpace", "cell_alpha_spec", "node_names"]


def node_names(steps: int) -> list[str]:
    """Names of the cell's nodes: the two inputs, then the intermediate nodes 0..steps-1."""
    return ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(steps)]


def cell_alpha_spec(name: str, ops: tuple[str, ...], steps: int = 4) -> AlphaSpec:
    """One row per edge (j -> node i), rows ordered node by node; grouped by target node, k = 2."""
    names = node_names(steps)
    rows, groups, edges = [], [], []
    for i in range(steps):
        for j in range(2 + i):
            rows.append(f"{names[j]}->{names[2 + i]}")
            groups.append(i)
            edges.append((names[j], names[2 + i]))
    return AlphaSpec(name, tuple(ops), tuple(rows), tuple(groups), k=2, edges=tuple(edges))


class SearchCell(nn.Module):
    """A search cell. forward(s0 (B, C_pp, H, W), s1 (B, C_p, H', W'), view) -> (B, multiplier * C, H'', W'').

    Parameter-free ops (pools with their affine-free BN, identity) give the same output on every edge that
    leaves the same node, so one module per (source node, op) is shared by those edges and computed once per
    forward (an exact saving that DARTS' dense forward and backward get as well).
    """

    def __init__(self, steps: int, multiplier: int, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, ops: tuple[str, ...]):
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
        self.matrix = "reduce" if reduction else "normal"
        self.ops = ops
        self.skip = tuple(k for k, o in enumerate(ops) if o == "none")
        self.preprocess0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                            else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        self.sources: list[int] = []          # source node of each row
        self.strides: list[int] = []
        shared: dict[tuple[int, str], nn.Module] = {}
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                row = []
                for o in ops:
                    op = search_op(o, C, stride)
                    if not any(True for _ in op.parameters()):
                        op = shared.setdefault((j, o), op)
                    row.append(op)
                self.edges.append(nn.ModuleList(row))
                self.sources.append(j)
                self.strides.append(stride)
        self.param_free = tuple(not any(True for _ in m.parameters()) for m in self.edges[0])
        # per row and op: the op begins with a ReLU (applied once per source node in the alpha step)
        self.relu_first = [tuple(starts_with_relu(m) for m in edge) for edge in self.edges]
        # per row and op: a ReLU/conv/BN chain that the alpha step runs batched over the edges of one source
        self.batchable = [tuple(batchable(m) for m in edge) for edge in self.edges]
        self.rows_by_stride = {s: [r for r, t in enumerate(self.strides) if t == s] for s in set(self.strides)}
        self.alpha_subbatch: int | None = None

    def forward(self, s0: Tensor, s1: Tensor, view: ArchView) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        cache: dict[tuple[int, int], Tensor] = {}
        pending = PendingCache(self.sources, view.selected[self.matrix]) if view.mode == NASP else None
        r = 0
        for _ in range(self.steps):
            node = None
            for j in range(len(states)):
                if pending is not None:
                    out = self._nasp_edge(view, r, states[j], pending)
                else:
                    out = mix(view, self.matrix, r, self._compute(r, states[j], cache), len(self.ops), self.skip)
                if out is not None:
                    node = out if node is None else node + out
                r += 1
            if node is None:   # every incoming edge dropped or 'none': a zero node of the right shape
                node = torch.zeros_like(states[1] if not self.reduction else states[1][:, :, ::2, ::2])
            states.append(node)
        return torch.cat(states[-self.multiplier:], dim=1)

    def _compute(self, r: int, x: Tensor, cache: dict):
        j, ops = self.sources[r], self.edges[r]

        def compute(k: int) -> Tensor:
            if not self.param_free[k]:
                return ops[k](x)
            key = (j, k)
            if key not in cache:
                cache[key] = ops[k](x)
            return cache[key]

        return compute

    def _nasp_edge(self, view: ArchView, r: int, x: Tensor, pending: PendingCache) -> Tensor:
        """NASP alpha step on one edge: the selected op runs with its graph; the other ops run later, inside
        the backward pass, without graphs, each reduced at once to dL/dĀ_k = <dL/d(edge out), op_k(x)>."""
        w, sel = view.row(self.matrix, r)
        pending.inputs.setdefault(self.sources[r], x)          # for the batched runs over the whole cell
        if sel >= 0 and sel not in self.skip:
            y = self.edges[r][sel](x)
        else:     # dropped row or 'none': the row output is 0, its alpha gradients are still needed
            H, W = x.shape[-2:]
            s = self.strides[r]
            y = x.new_zeros((x.shape[0], x.shape[1], (H + s - 1) // s, (W + s - 1) // s))
            if x.is_contiguous(memory_format=torch.channels_last):
                y = y.contiguous(memory_format=torch.channels_last)     # same layout as the node it is added to
        return DeferredAlphaGrad.apply(w, x, y, (self, r, sel, pending))

    def row_alpha_grad(self, r: int, sel: int, x: Tensor, y: Tensor, g: Tensor, pending: PendingCache) -> Tensor:
        """(ops,) gradient of the loss w.r.t. row r of Ā given g = dL/d(row output) (B, C, H', W').

        Runs under no_grad inside the backward pass. Shared work: parameter-free ops and the leading ReLU of the
        parametric ops once per (source node, sub-batch); each ReLU/conv/BN op type batched over all the cell's
        rows of r's stride (:mod:`.batched`; rows whose selected op it is are left out, their output is the
        forward's y)."""
        B = x.shape[0]
        b = min(self.alpha_subbatch or B, B)
        acc = torch.promote_types(g.dtype, torch.float32)      # accumulate bf16/fp16 products in float32
        cl = torch.channels_last
        if x.is_contiguous(memory_format=cl) and not g.is_contiguous(memory_format=cl):
            g = g.contiguous(memory_format=cl)     # a slice of the cat's gradient: one copy, then dots
        xs, gs = x[:b], g[:b]
        j, edge, relu_first = self.sources[r], self.edges[r], self.relu_first[r]
        zero = None
        grads = []
        for k in range(len(self.ops)):
            if k in self.skip:
                zero = g.new_zeros((), dtype=acc) if zero is None else zero
                grads.append(zero)
            elif k == sel:
                grads.append(inner(g, y, acc))
            else:
                if self.batchable[r][k]:
                    dot = self._batched_dot(r, k, gs, pending, acc)
                else:
                    if self.param_free[k]:
                        out = pending.get((j, k, b), lambda k=k: edge[k](xs))
                    elif relu_first[k]:
                        out = after_relu(edge[k], pending.get((j, "relu", b), lambda: torch.relu(xs)))
                    else:
                        out = edge[k](xs)
                    dot = inner(gs, out, acc)
                grads.append(dot if b == B else dot * (B / b))
        pending.done(r)
        return torch.stack(grads)

    def _batched_dot(self, r: int, k: int, gs: Tensor, pending: PendingCache, acc: torch.dtype) -> Tensor:
        """<gs, op k of row r on its input>, op k's output coming from one batched run of op k over every row
        of the cell with r's stride (computed when the first of those rows needs it)."""
        b, stride = gs.shape[0], self.strides[r]
        key = ("batched", k, stride, b)
        outs = pending.get(key, lambda: self._run_group(k, stride, b, pending))
        dot = inner(gs, outs.pop(r), acc)        # each row takes its output once: freed right after
        if not outs:
            del pending.store[key]
        return dot

    def _run_group(self, k: int, stride: int, b: int, pending: PendingCache) -> dict[int, Tensor]:
        """row -> op k's output (b, C, H', W') for every row with this stride whose selected op is not k (all
        their inputs have one shape): ONE :func:`run_batched` call over those rows (the edges of every source
        node of the cell together), split into dense per-row tensors."""
        group = [q for q in self.rows_by_stride[stride] if pending.selected[q] != k]
        x_relu = [pending.get((self.sources[q], "relu", b),
                              lambda q=q: torch.relu(pending.inputs[self.sources[q]][:b])) for q in group]
        if len(group) == 1:
            return {group[0]: after_relu(self.edges[group[0]][k], x_relu[0])}
        full = run_batched([self.edges[q][k] for q in group], x_relu)                 # (b, E * C, H', W')
        return dict(zip(group, split_edges(full, len(group)), strict=True))


@register_space("cnn")
class CNNSearchSpace(SearchSpace):
    """The DARTS/NASP image-classification supernet. forward(x (B, 3, H, W), view) -> logits (B, num_classes).

    C: channels of the first cell (stem has stem_multiplier * C); layers: number of cells; steps: intermediate
    nodes per cell; multiplier: nodes concatenated into the cell output; op_set: "darts" (7 + none) or "nasp"
    (12 ops, separate normal/reduction lists); alpha_init / seed: see :class:`nasp.arch.ArchParameters`;
    derive_rule: "prox" (the last prox_C1, the core's rule, used by NASP) or "darts" (per node the 2 edges with
    the largest non-'none' weight, op = argmax over non-'none' ops; the DARTS paper's rule).
    """

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, in_channels: int = 3, op_set: str = "darts", alpha_init: str = "nasp",
                 seed: int = 0, derive_rule: str = "prox", alpha_subbatch: int | None = None):
        super().__init__()
        if op_set not in OP_SETS:
            raise ValueError(f"op_set must be one of {sorted(OP_SETS)}, got {op_set!r}")
        if derive_rule not in ("prox", "darts"):
            raise ValueError(f"derive_rule must be 'prox' or 'darts', got {derive_rule!r}")
        if layers < 1 or steps < 1 or not 1 <= multiplier <= steps:
            raise ValueError(f"need layers >= 1, steps >= 1, 1 <= multiplier <= steps; got {layers}, {steps}, "
                             f"{multiplier}")
        self.C, self.num_classes, self.layers, self.steps = C, num_classes, layers, steps
        self.op_set, self.derive_rule = op_set, derive_rule
        normal_ops, reduce_ops = OP_SETS[op_set]
        self.arch = ArchParameters([cell_alpha_spec("normal", normal_ops, steps),
                                    cell_alpha_spec("reduce", reduce_ops, steps)], init=alpha_init, seed=seed)
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = layers >= 3 and i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            ops = reduce_ops if reduction else normal_ops
            self.cells.append(SearchCell(steps, multiplier, C_pp, C_p, C_curr, reduction, reduction_prev, ops))
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        self.alpha_subbatch = alpha_subbatch

    @property
    def alpha_subbatch(self) -> int | None:
        return self._alpha_subbatch

    @alpha_subbatch.setter
    def alpha_subbatch(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"alpha_subbatch must be None or >= 1, got {value}")
        self._alpha_subbatch = value
        for cell in self.cells:
            cell.alpha_subbatch = value

    def forward(self, x: Tensor, view: ArchView) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, view)
        return self.classifier(self.global_pooling(s1).flatten(1))

    # ---- hooks of the core ---------------------------------------------------------------------------------
    def op_costs(self) -> dict[str, Tensor]:
        """Per-op parameter counts of the first cell of each type (every cell of a type has the same ratios)."""
        out = {}
        for name in ("normal", "reduce"):
            cell = next((c for c in self.cells if c.matrix == name), None)
            if cell is not None:
                out[name] = cost_matrix([list(edge) for edge in cell.edges])
        return out

    def darts_onehot(self) -> dict[str, Tensor]:
        """DARTS' derivation as a one-hot architecture (rows, ops) per matrix: per node keep the 2 incoming edges
        with the largest softmax weight over non-'none' ops; each keeps its best non-'none' op."""
        out = {}
        for name, a in self.arch:
            spec = self.arch.specs[name]
            w = torch.softmax(a.detach(), dim=-1).clone()
            for k, o in enumerate(spec.ops):
                if o == "none":
                    w[:, k] = -1.0
            best, idx = w.max(dim=1)
            onehot = torch.zeros_like(w)
            groups = torch.tensor(spec.groups, device=w.device)
            for g in range(self.steps):
                rows = torch.nonzero(groups == g).flatten()
                top = rows[torch.topk(best[rows], min(spec.k, len(rows))).indices]
                onehot[top, idx[top]] = 1.0
            out[name] = onehot
        return out

    def sparse_view(self) -> ArchView:
        if self.derive_rule == "darts":
            return self.arch.sparse_view(self.darts_onehot())
        return self.arch.sparse_view()

    def genotype(self) -> Genotype:
        if self.derive_rule == "darts":
            return genotype_from_onehot(self.arch.specs, self.darts_onehot())
        return super().genotype()

    @torch.no_grad()
    def selected_parameters(self, view: ArchView) -> set[int]:
        """ids of the op parameters a SPARSE view runs (for tests and diagnostics)."""
        assert view.mode == SPARSE
        ids = set()
        for cell in self.cells:
            for r, sel in enumerate(view.selected[cell.matrix]):
                if sel >= 0:
                    ids.update(id(p) for p in cell.edges[r][sel].parameters())
        return ids
