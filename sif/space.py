"""The SIF supernet: embeddings, the element-wise transform g per side, one linear head per candidate interaction.

Matrix case (user, item): prediction ``y = w_o^T o(g_u(u_i), g_v(v_j))`` with ``o`` one of the vector-wise ops of
:mod:`sif.interactions`; tensor case (user, item, context): ``o`` one of the 53 two-stage candidates. The choice of
``o`` is one NASP row (a single alpha matrix ``interaction`` with one row). Heads are bias-free linear maps
projected onto the unit L2 ball after every weight step.

Options beyond the paper (off by default where they change the paper's space): ``use_bias`` adds global, user and
item (and context) biases, so that a biased MF (``multiply`` with a fixed head) lies inside the space;
``g_skip`` makes g a residual map ``x + mlp(x)``; ``embedding_dim`` larger than the paper's 2; ``head_radius`` the
radius of the heads' L2 ball (the paper: 1; ``math.inf``: no projection). With radius 1 a ``multiply`` head of
dimension k has weights of about 1/sqrt(k), so scores stay small unless the embeddings grow; radius sqrt(k) holds
the all-ones head, i.e. a plain dot product. ``neighbourhood`` ("user", "item" or "both") adds SVD++-style
implicit-feedback vectors to the embeddings (:mod:`sif.neighbourhood`), penalised with ``neighbourhood_reg``
times the embeddings' L2 coefficient. ``sparse_rows``: the embedding tables (and the neighbourhood vectors) get
row-sparse gradients and row-wise optimiser updates (:class:`nasp.optim.RowSparseOptimizer`: only the batch's rows
and their state change; Adagrad and plain SGD exact, Adam lazy), in the generic step, the fused step and
stand-alone training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from nasp.arch import SPARSE, AlphaSpec, ArchParameters, ArchView
from nasp.mixed import mix
from nasp.optim import mark_row_sparse
from nasp.regularizers import cost_matrix
from nasp.space import SearchSpace, register_space

from .interactions import EMBEDDING_DIM, INTERACTIONS, SEARCH_SPACE, Interaction, out_dim, tensor_candidates
from .model import RatingModule
from .neighbourhood import add_neighbourhoods, make_neighbourhoods
from .task import mse_closed_form
from .transform import ElementwiseMLP

__all__ = ["ElementwiseMLP", "Encoded", "SIFSpace", "SIDES", "build_candidates"]

SIDES = ("u", "v", "c")
UNIQUE_ROWS_FRACTION = 0.8   # g runs on a side's distinct rows when there are at most this fraction of the batch
_HAS_FOREACH = all(hasattr(torch, f) for f in ("_foreach_norm", "_foreach_div_", "_foreach_clamp_min"))  # private


class Encoded(NamedTuple):
    """The looked-up inputs of one batch: ``emb`` what g sees (rows + neighbourhood vectors) per side (B, k);
    ``bias`` (B,) or None; ``rows`` the looked-up embedding rows (B, k) and ``neighbours`` the scaled neighbourhood
    vectors (B, k) that the L2 penalties regularise."""

    emb: dict[str, Tensor]
    bias: Tensor | None
    rows: list[Tensor]
    neighbours: list[Tensor]


@register_space("sif")
class SIFSpace(SearchSpace, RatingModule):
    """Supernet over interaction functions. ``forward(users, items, contexts=None, view=None) -> (B,)``.

    ops: candidate names (default: the 5 primitives and the mixtures for matrices, ``SEARCH_SPACE``; all 53
    two-stage candidates for tensors; a single name gives a fixed interaction function). With ``view=None`` the
    current discrete architecture runs.
    """

    def __init__(self, num_users: int, num_items: int, num_contexts: int = 0, embedding_dim: int = EMBEDDING_DIM,
                 ops: Iterable[str] | None = None, use_bias: bool = False, g_hidden: int = 8, g_skip: bool = False,
                 init_std: float = 0.1, alpha_init: str = "nasp", seed: int = 0, head_radius: float = 1.0,
                 head_init: str = "uniform", neighbourhood: str | None = None, neighbourhood_reg: float = 0.5,
                 sparse_rows: bool = False):
        super().__init__()
        self.sparse_rows = bool(sparse_rows)
        if head_init not in ("uniform", "ones"):
            raise ValueError(f"head_init must be 'uniform' or 'ones', got {head_init!r}")
        self.head_init = head_init
        if not head_radius > 0:
            raise ValueError(f"head_radius must be > 0 (math.inf: no projection), got {head_radius}")
        self.head_radius = float(head_radius)
        self.sides = SIDES if num_contexts > 0 else SIDES[:2]
        sizes = {"u": num_users, "v": num_items, "c": num_contexts}
        self.embedding_dim, self.use_bias = embedding_dim, use_bias
        self.names, self.candidates, widths = build_candidates(ops, embedding_dim, len(self.sides) == 3)
        g = torch.Generator().manual_seed(seed)
        # one table per side; with biases its last column is the side's bias (one lookup gives both)
        width = embedding_dim + int(use_bias)
        self.embeddings = nn.ModuleDict({s: nn.Embedding(sizes[s], width, sparse=self.sparse_rows)
                                         for s in self.sides})
        if self.sparse_rows:              # row-sparse gradients and row-wise optimiser updates (nasp.optim)
            mark_row_sparse(*(e.weight for e in self.embeddings.values()))
        self.g = ElementwiseMLP(len(self.sides), g_hidden, g_skip)
        self.heads = nn.ModuleList(nn.Linear(w, 1, bias=False) for w in widths)
        self.global_bias = nn.Parameter(torch.zeros(())) if use_bias else None
        self.neighbourhoods = make_neighbourhoods(neighbourhood, num_users, num_items, embedding_dim,
                                                  self.sparse_rows)
        self.neighbourhood_reg = float(neighbourhood_reg)
        self._init_weights(g, init_std)
        spec = AlphaSpec("interaction", self.names, ("*".join(self.sides),))
        self.arch = ArchParameters([spec], init=alpha_init, seed=seed)

    def _init_weights(self, g: torch.Generator, std: float) -> None:
        with torch.no_grad():
            for emb in self.embeddings.values():
                emb.weight.copy_(std * torch.randn(emb.weight.shape, generator=g))
                if self.use_bias:
                    emb.weight[:, -1] = 0.0
            self.g.reset_parameters(g)
            for head in self.heads:
                bound = 1.0 / math.sqrt(head.in_features)
                head.weight.copy_(bound * (2 * torch.rand(head.weight.shape, generator=g) - 1))
                if self.head_init == "ones":
                    head.weight.fill_(1.0)

    # ---- pieces of the forward pass -------------------------------------------------------------------------
    def encode(self, users: Tensor, items: Tensor, contexts: Tensor | None = None
               ) -> tuple[dict[str, Tensor], Tensor | None]:
        """(embeddings per side (B, k), global + side biases (B,) or None), from one lookup per side."""
        enc = self.encode_parts(users, items, contexts)
        return enc.emb, enc.bias

    def encode_parts(self, users: Tensor, items: Tensor, contexts: Tensor | None = None) -> Encoded:
        """:meth:`encode` plus what the penalties see: the looked-up rows per side (B, k) and each added neighbourhood
        vector (B, k) times sqrt(neighbourhood_reg), so that an L2 penalty ``reg`` on it is
        ``reg * neighbourhood_reg * |n|^2``."""
        idx = {"u": users, "v": items, "c": contexts}
        if self.sparse_rows:                                                  # sparse COO table gradients
            rows = {s: self.embeddings[s](idx[s]) for s in self.sides}                     # (B, k [+1])
        else:
            rows = {s: self.embeddings[s].weight.index_select(0, idx[s]) for s in self.sides}
        bias = None
        if self.use_bias:            # one split per row block: its backward is one cat, not two zero-filled copies
            parts = {s: r.split([self.embedding_dim, 1], dim=1) for s, r in rows.items()}
            bias = self.global_bias + sum(p[1].squeeze(1) for p in parts.values())
            rows = {s: p[0] for s, p in parts.items()}
        emb, neighbours = add_neighbourhoods(self.neighbourhoods, rows, idx, self.neighbourhood_reg)
        return Encoded(emb, bias, list(rows.values()), neighbours)

    @staticmethod
    def lookup_closed_form(table: Tensor, rows: Tensor, out: Tensor) -> None:
        """:meth:`encode`'s lookup of one side without autograd, for a hand-written step (:mod:`sif.fused`): the
        embeddings of table rows ``rows`` (n,) into ``out`` (n, k); with biases the table's last column (k) is the
        bias, left out here (:meth:`bias_closed_form`). A looked-up row's gradient is (dL/de, dL/dbias)."""
        torch.index_select(table[:, :out.shape[1]], 0, rows, out=out)

    @staticmethod
    def bias_closed_form(tables: tuple[Tensor, Tensor], global_bias: Tensor, users: Tensor, items: Tensor
                         ) -> Tensor:
        """:meth:`encode`'s biases (B,) of the matrix case without autograd: the global bias plus the last column
        of each table at the batch's rows."""
        k = tables[0].shape[1] - 1
        return global_bias + (tables[0][:, k].index_select(0, users) + tables[1][:, k].index_select(0, items))

    def transform(self, emb: dict[str, Tensor], idx: dict[str, Tensor] | None = None,
                  plans: dict[str, tuple[Tensor, Tensor] | None] | None = None) -> dict[str, Tensor]:
        """g applied element-wise per side: (B, k) per side -> (B, k) per side.

        ``idx`` (the batch's row index per side (B,)) lets g run once per distinct row: ``emb[s]`` is a function of
        ``idx[s]`` alone (the table row plus its neighbourhood vector), so g is evaluated on one copy of each
        distinct row and gathered back (same values up to float rounding; autograd sends each row's gradient to one
        of its copies, whose sum over the batch is unchanged). A side goes this way only when its distinct rows are
        at most ``UNIQUE_ROWS_FRACTION`` of the batch; otherwise (and without ``idx``) all sides run stacked.
        ``plans``: :meth:`unique_plans` of ``idx``, when the caller needs them twice (``idx`` is then not needed)."""
        if plans is None and idx is not None:
            plans = self.unique_plans(idx)
        if plans is not None:
            if any(p is not None for p in plans.values()):
                return {s: self._transform_side(i, emb[s], plans[s]) for i, s in enumerate(self.sides)}
        z = self.g(torch.stack([emb[s] for s in self.sides]))     # (S, B, k)
        return dict(zip(self.sides, z.unbind(0), strict=True))

    def transform_free(self, rows: list[Tensor], plans: dict[str, tuple[Tensor, Tensor] | None]
                       ) -> dict[str, Tensor]:
        """g of the free vectors alone (no neighbourhood vector added), (B, k) per side that has a neighbourhood:
        ``rows`` the looked-up rows of every side (``Encoded.rows``), ``plans`` the batch's :meth:`unique_plans`."""
        sides = [(i, s) for i, s in enumerate(self.sides) if s in self.neighbourhoods]
        return {s: self._transform_side(i, rows[i], plans[s]) for i, s in sides}

    def unique_plans(self, idx: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor] | None]:
        """:meth:`_unique_plan` of every side's batch index (B,), computed once for :meth:`transform` and
        :meth:`transform_free`."""
        return {s: self._unique_plan(idx[s]) for s in self.sides}

    @staticmethod
    def distinct_rows(index: Tensor) -> tuple[Tensor, Tensor, bool]:
        """(the distinct rows of a batch index (U,) sorted, each rating's position among them (B,), whether g
        should run on the distinct rows: U at most ``UNIQUE_ROWS_FRACTION`` of the batch B, else g on every rating
        is as cheap). The one home of that choice (the generic step's :meth:`unique_plans`, the fused step)."""
        rows, inverse = torch.unique(index, return_inverse=True)                         # (U,), (B,)
        return rows, inverse, rows.shape[0] <= UNIQUE_ROWS_FRACTION * index.shape[0]

    @staticmethod
    def _unique_plan(index: Tensor) -> tuple[Tensor, Tensor] | None:
        """(one batch position per distinct row (U,), each position's distinct row (B,)), or None when g should
        run on every rating (:meth:`distinct_rows`)."""
        rows, inverse, few = SIFSpace.distinct_rows(index)
        if not few:
            return None
        positions = torch.arange(index.shape[0], device=index.device)
        first = torch.full_like(rows, index.shape[0]).scatter_reduce_(0, inverse, positions, reduce="amin")
        return first, inverse

    def _transform_side(self, side: int, emb: Tensor, plan: tuple[Tensor, Tensor] | None) -> Tensor:
        """g of one side (B, k) -> (B, k), on its distinct rows when ``plan`` says so."""
        if plan is None:
            return self.g.forward_side(side, emb)
        first, inverse = plan
        return self.g.forward_side(side, emb.index_select(0, first)).index_select(0, inverse)  # (U, k) -> (B, k)

    def candidate(self, k: int, z: dict[str, Tensor]) -> Tensor:
        """Head output of candidate k on transformed embeddings: (B,)."""
        return self.heads[k](self.candidates[k](z)).squeeze(-1)

    def interact(self, z: dict[str, Tensor], view: ArchView) -> Tensor:
        out = mix(view, "interaction", 0, lambda k: self.candidate(k, z), len(self.names))
        if out is None:
            raise RuntimeError("the interaction row was dropped; SIF always keeps its single row")
        return out

    def forward(self, users: Tensor, items: Tensor, contexts: Tensor | None = None,
                view: ArchView | None = None) -> Tensor:
        view = self.sparse_view() if view is None else view
        if self._table_path(users.shape[0]):
            z, bias = self._transform_rows({"u": users, "v": items, "c": contexts})
        else:
            emb, bias = self.encode(users, items, contexts)
            z = self.transform(emb, {"u": users, "v": items, "c": contexts})
        pred = self.interact(z, view)
        return pred if bias is None else pred + bias

    # ---- evaluation: g applied to each table once, not to every looked-up row ---------------------------------
    def _table_path(self, batch: int) -> bool:
        """Evaluate through g(table) when nothing needs gradients, there are no neighbourhoods (which add a vector
        per rating) and no table has more rows than the batch: then g runs once on each table row instead of on
        every rating's copy of it (ML-100K validation batches of 8192 at dim 32: 6x fewer g evaluations). Nothing
        is cached between calls: fused optimiser kernels do not bump version counters, so a cache could not tell
        that the parameters changed."""
        if self.training or torch.is_grad_enabled() or len(self.neighbourhoods):
            return False
        return all(self.embeddings[s].weight.shape[0] <= batch for s in self.sides)

    def _transform_rows(self, idx: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
        """(g(e) per side (B, k), biases (B,) or None) from g(table) (the same values as ``transform`` applied to
        the looked-up rows, up to float rounding)."""
        tables = [self.embeddings[s].weight for s in self.sides]
        k = self.embedding_dim
        z = {s: self.g.forward_side(i, t[:, :k]).index_select(0, idx[s])                 # (rows, k) -> (B, k)
             for i, (s, t) in enumerate(zip(self.sides, tables, strict=True))}
        bias = None
        if self.use_bias:
            bias = self.global_bias + sum(t[:, k].index_select(0, idx[s]) for s, t in zip(self.sides, tables,
                                                                                            strict=True))
        return z, bias

    def effective_penalty(self, z: dict[str, Tensor], view: ArchView, free: dict[str, Tensor] | None = None
                          ) -> Tensor:
        """Per-rating L2 of the embeddings as the selected op's head sees them (scalar, mean over the batch).

        With a learned head, the head (and g, when the penalty sits on the raw embeddings) can rescale its way past
        an L2 penalty: ``w^T (u * v)`` is unchanged by ``w -> c^2 w, u -> u / c, v -> v / c`` while ``|u|^2 + |v|^2``
        falls by c^2. This penalty is invariant to that rescaling, like biased MF's L2: for ``multiply`` it is
        ``sum_i |w_i| (u_i^2 + v_i^2)`` (the embeddings scaled by sqrt|w_i|, biased MF's L2 at w = 1), for the ops
        linear in each input (plus, max, min, concat) ``k sum_i w_i^2 (u_i^2 + v_i^2)`` per side (the embeddings
        scaled by |w_i|; the factor k makes the smallest penalty of an additive user score a = w^T u equal a^2, as
        for a regularised bias), on the transformed embeddings ``z = g(e)``. Under NASP and DENSE views the penalty
        of op k is weighted by its weight, like its output. Tensor case (two-stage ops of mixed degree): the plain
        per-rating L2 of ``z``.

        With neighbourhoods, ``free`` holds g of each side's free vector alone, ``g(p)`` (B, k): what the head sees of a
        side is then split into ``g(p)`` and the neighbourhood's share ``z - g(p)``, penalised ``neighbourhood_reg``
        times as much, so that at g = identity and an all-ones head this is SVD++'s L2 ``|p|^2 + nr |n|^2`` (a plain
        penalty on z would give the neighbourhood vectors the free vectors' coefficient).
        """
        sq = {s: z[s] * z[s] for s in self.sides}                              # (B, k) each
        for s, f in (free or {}).items():
            sq[s] = f * f + self.neighbourhood_reg * (z[s] - f) ** 2
        if len(self.sides) != 2:
            return sum(q.sum() for q in sq.values()) / sq["u"].shape[0]
        k = self.embedding_dim

        def one(j: int) -> Tensor:
            w = self.heads[j].weight.view(-1)                                  # (width,)
            op = INTERACTIONS.get(self.names[j])
            if op is None:
                raise ValueError(f"penalty='effective' does not know op {self.names[j]!r}")
            scale = op.penalty_scale(w, k)                                     # (width,)
            if op.split_sides:                                                 # one half of the head per side
                return (sq["u"] @ scale[:k] + sq["v"] @ scale[k:]).mean()
            return ((sq["u"] + sq["v"]) @ scale.view(-1, k).sum(0)).mean()     # every block sees both sides

        return mix(view, "interaction", 0, one, len(self.names))

    @staticmethod
    def effective_penalty_closed_form(op: Interaction, w: Tensor, z: Tensor, reg: float, dz: Tensor,
                                      dw: Tensor) -> Tensor:
        """``reg *`` :meth:`effective_penalty` of one matrix-case op (record ``op``, head ``w`` (width,)) on the
        stacked sides ``z`` (2, B, k), in closed form for a hand-written step (:mod:`sif.fused`): returns the value
        and adds its gradients to ``dz`` (2, B, k) and ``dw`` (width * k,)."""
        b, k, sq = z.shape[1], z.shape[2], z * z                                            # (2, B, k)
        scale = op.penalty_scale(w, k)                                                      # (width * k,)
        # concat: one half of the head per side; other ops: every block of k sees both sides
        s2 = scale.view(2, 1, k) if op.split_sides else scale.view(-1, k).sum(0).view(1, 1, k)
        dz.add_(z * s2 * (2 * reg / b))
        col = sq.sum(1) / b                                                                 # (2, k)
        col = col.reshape(-1) if op.split_sides else col.sum(0).repeat(op.width)            # (width * k,)
        dw.add_(reg * col * op.penalty_scale_grad(w, k))
        return reg * ((sq * s2).sum() / b)

    def other_heads_loss(self, z: dict[str, Tensor], target: Tensor, view: ArchView) -> Tensor | None:
        """MSE of every non-selected head on detached features (the heads learn, nothing else does), so that the
        alpha step judges unselected ops with trained heads. ``target`` is the rating minus the (detached) bias."""
        if view.mode != SPARSE or len(self.names) == 1:
            return None
        sel = view.selected["interaction"][0]
        zd = {s: t.detach() for s, t in z.items()}
        outs = torch.stack([self.candidate(k, zd) for k in range(len(self.names)) if k != sel])   # (K-1, B)
        return ((outs - target.detach()) ** 2).mean(dim=1).sum()

    @staticmethod
    def other_heads_loss_closed_form(ops: list[Interaction], heads: list[Tensor], zu: Tensor, zv: Tensor,
                                     target: Tensor, sel: int, grads: list[Tensor]) -> Tensor:
        """:meth:`other_heads_loss` of the matrix case in closed form, for a hand-written step (:mod:`sif.fused`):
        op records ``ops`` with heads ``heads`` ((width,) each) on z = (zu, zv) (B, k); writes the non-selected
        heads' gradients into ``grads`` ((width,) each); no gradient to z."""
        total = None
        for j, (op, w) in enumerate(zip(ops, heads, strict=True)):
            if j != sel:
                f = op(zu, zv)                                                              # (B, width)
                mse, dr = mse_closed_form(torch.mv(f, w) - target)
                total = mse if total is None else total + mse
                torch.mv(f.t(), dr, out=grads[j])
        return total

    # ---- hooks of the search core and of sif.model.RatingModule ----------------------------------------------
    searchable = True

    def slow_parameters(self) -> list[nn.Parameter]:
        """g learns at ``lr * train.g_lr_scale`` in stand-alone training."""
        return list(self.g.parameters())

    def alpha_step_parameters(self) -> list[nn.Parameter]:
        """The reference trains g with the alphas (Adam) as well as with the weights (Adagrad)."""
        return list(self.g.parameters())

    @torch.no_grad()
    def after_weight_step(self) -> None:
        """Project every head onto the L2 ball of radius ``head_radius`` (the paper: the unit ball)."""
        if math.isinf(self.head_radius):
            return
        ws = [h.weight for h in self.heads]
        if not _HAS_FOREACH:                # torch's private _foreach ops missing: the same maths per head
            for w in ws:
                n = torch.linalg.vector_norm(w)
                w.div_((n if self.head_radius == 1.0 else n / self.head_radius).clamp_min(1.0))
            return
        norms = torch._foreach_norm(ws)
        if self.head_radius != 1.0:
            torch._foreach_div_(norms, self.head_radius)
        torch._foreach_div_(ws, torch._foreach_clamp_min(norms, 1.0))

    def op_costs(self) -> dict[str, Tensor]:
        return {"interaction": cost_matrix([list(self.heads)])}

    def fused_nasp_step(self, searcher) -> Callable:
        """The hand-fused NASP step of the matrix case (:class:`sif.fused.FusedSIFStep`, used by a
        :class:`~nasp.search.Searcher` unless ``fused=False``); raises FusedStepUnsupported for unsupported settings."""
        from .fused import FusedSIFStep

        return FusedSIFStep(searcher)



def _matrix_fn(name: str) -> Callable[[dict[str, Tensor]], Tensor]:
    op = INTERACTIONS[name]
    return lambda z: op(z["u"], z["v"])


def build_candidates(ops: Iterable[str] | str | None, k: int, tensor: bool):
    """(names, callables z -> (B, width), widths) of the candidate interactions; None or "all" = every one."""
    if ops is not None and not isinstance(ops, str):
        ops = tuple(ops)
    elif isinstance(ops, str):
        ops = None if ops == "all" else (ops,)
    if tensor:
        cands = tensor_candidates()
        if ops is not None:
            by_name = {c.name: c for c in cands}
            unknown = [o for o in ops if o not in by_name]
            if unknown:
                raise ValueError(f"unknown tensor interaction(s) {unknown}; known: {sorted(by_name)}")
            cands = tuple(by_name[o] for o in ops)
        return tuple(c.name for c in cands), list(cands), [c.out_dim(k) for c in cands]
    names = SEARCH_SPACE if ops is None else ops
    unknown = [o for o in names if o not in INTERACTIONS]
    if unknown:
        raise ValueError(f"unknown interaction(s) {unknown}; known: {sorted(INTERACTIONS)}")
    return tuple(names), [_matrix_fn(n) for n in names], [out_dim(n, k) for n in names]
