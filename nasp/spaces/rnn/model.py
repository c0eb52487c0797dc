"""The recurrent search space (supernet language model) and the evaluation language model of a found cell.

Alpha matrix ``cell``: one row per edge i -> j (node j = 1..8, predecessor i = 0..j-1; 36 rows for 8 nodes),
grouped by j with k = 1 kept row per node; one column per activation (DARTS: none, tanh, relu, sigmoid,
identity). Node j computes ``s_j = sum_i sum_k w_ijk (s_i + c_i (f_k(g_i) - s_i))`` with ``(c_i, g_i)`` from the
node's shared map W_j applied to s_i. SPARSE (NASP weight step): only the kept predecessor's selected
activation runs and W_j is applied to that predecessor only. NASP alpha step (``nasp_alpha_step``): "contract"
(the default) runs the sparse forward and computes dL/dĀ of every candidate in the backward pass, batched over
all time steps, without a graph (exact, see :mod:`.alpha_step`); "graph" runs the kept edge with a graph and
every other edge (W_j on the other predecessors included) without one, time step by time step. DENSE (DARTS):
everything with graphs. One-hot cells (SPARSE, and NASP with "contract") run by default as one autograd function
over the whole sequence with a hand-written backward (:mod:`.fused`, ``fused_cell=True``); DENSE never does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...arch import DENSE, NASP, SPARSE, AlphaSpec, ArchParameters, ArchView
from ...genotype import Genotype, genotype_from_onehot
from ...mixed import mix
from ...prox import prox_c1
from ...space import SearchSpace, register_space
from .alpha_step import AlphaStore, alpha_leaf, node_tap
from .cell import LanguageModelShell, autocast_low, edge_output
from .fused import CellPlan
from .genotypes import MATRIX, PRIMITIVES_DARTS, RNNGenotype, row_pairs

__all__ = ["RNNSearchSpace", "RNNModel", "expected_num_params", "derive_rnn"]


def expected_num_params(vocab_size: int, ninp: int, nhid: int, num_nodes: int = 8, tie_weights: bool = True) -> int:
    """Parameters of the evaluation model: embedding (+ decoder when untied), decoder bias, W0 and the W_j."""
    decoder = 0 if tie_weights else vocab_size * nhid
    return vocab_size * ninp + decoder + vocab_size + (ninp + nhid) * 2 * nhid + num_nodes * nhid * 2 * nhid


def derive_rnn(arch: ArchParameters) -> Genotype:
    """The final cell: prox_C1 of the alphas with any 'none' column excluded (same ranking and tie-break as the
    search; without 'none' this is exactly the last prox_C1). Keeps one predecessor per node."""
    onehot = {}
    for name, a in arch:
        spec = arch.specs[name]
        a = a.detach().clone()
        for k, op in enumerate(spec.ops):
            if op == "none":
                a[:, k] = a.min() - 1.0
        onehot[name] = prox_c1(a, arch.groups(name), spec.k, getattr(arch, f"op_priority_{name}"),
                               getattr(arch, f"row_priority_{name}"))
    return genotype_from_onehot(arch.specs, onehot)


@register_space("darts_rnn")
class RNNSearchSpace(SearchSpace):
    """Supernet language model over the DARTS recurrent cell.

    forward(x (T, B) int64, hidden (B, H), view) -> (logits (T, B, V), hidden (B, H), raw outputs (T, B, H)).
    Search defaults: 300 units, DARTS dropouts (output 0.75, hidden 0.25, x 0.75, input 0.2, embedding 0),
    batch normalisation (no affine) of every node's state, as DARTS' search cell does, so that the dense
    mixture stays bounded. It always uses the statistics of the current batch (no running averages): running
    averages let cells that include 'identity' chains blow up over long evaluation streams.
    nasp_alpha_step: how a NASP view's forward gets dL/dĀ: "contract" (sparse forward, one batched contraction in
    the backward pass) or "graph" (every candidate at every time step, the non-selected ones without graphs).
    Both are exact; "contract" is much cheaper.
    fused_cell: run one-hot cells (SPARSE views, and NASP views with "contract") as one autograd function over
    the whole sequence with a hand-written backward (:mod:`.fused`; the same values and gradients, far fewer
    operator calls); False: node by node through autograd. Under autocast (the search's ``amp: bf16``) the cell
    runs in float32 all the same and only the decoder's products in bfloat16, for every strategy.
    """

    def __init__(self, vocab_size: int = 10000, ninp: int = 300, nhid: int = 300, num_nodes: int = 8,
                 ops: tuple[str, ...] = PRIMITIVES_DARTS, dropout: float = 0.75, dropout_h: float = 0.25,
                 dropout_x: float = 0.75, dropout_i: float = 0.2, dropout_e: float = 0.0, weight_drop: float = 0.0,
                 batchnorm: bool = True, alpha_init: str = "nasp", seed: int = 0, nasp_alpha_step: str = "contract",
                 fused_cell: bool = True):
        """seed drives the initial weights, the alpha noise and the alpha tie-break priorities."""
        super().__init__()
        if nasp_alpha_step not in ("contract", "graph"):
            raise ValueError(f"nasp_alpha_step must be 'contract' or 'graph', got {nasp_alpha_step!r}")
        self.nasp_alpha_step = nasp_alpha_step
        self.fused_cell = fused_cell
        self.ops, self.num_nodes = tuple(ops), num_nodes
        self.skip = tuple(k for k, o in enumerate(self.ops) if o == "none")
        with torch.random.fork_rng(devices=[]):      # weights are a function of `seed`, global RNG untouched
            torch.manual_seed(seed)
            self.lm = LanguageModelShell(vocab_size, ninp, nhid, num_nodes, dropout, dropout_h, dropout_x,
                                         dropout_i, dropout_e, weight_drop, tie_weights=True)
        self.bns = nn.ModuleList(nn.BatchNorm1d(nhid, affine=False, track_running_stats=False)
                                 for _ in range(num_nodes)) if batchnorm else None
        pairs = row_pairs(num_nodes)
        self.pairs = pairs
        self.rows_of: dict[int, list[tuple[int, int]]] = {j: [] for j in range(1, num_nodes + 1)}
        for r, (i, j) in enumerate(pairs):
            self.rows_of[j].append((r, i))
        spec = AlphaSpec(MATRIX, self.ops, tuple(f"{i}->{j}" for i, j in pairs), groups=tuple(j for _, j in pairs),
                         k=1, edges=tuple((f"s{i}", f"s{j}") for i, j in pairs))
        self.arch = ArchParameters([spec], init=alpha_init, seed=seed)

    def init_hidden(self, batch_size: int, device=None) -> Tensor:
        return self.lm.init_hidden(batch_size, device)

    def forward(self, x: Tensor, hidden: Tensor, view: ArchView, targets: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """targets (T, B): return the mean NLL instead of the logits (see :class:`.cell.LanguageModelShell`).
        Under autocast (the search's ``amp``) only the decoder's products take its dtype (the shell's rule)."""
        low = autocast_low(x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            fused = self._fused(view, x.device.type)
            return self.lm(x, hidden, None if fused else self._node_fn(view), fused=fused, targets=targets, low=low)

    def _fused(self, view: ArchView, device_type: str) -> tuple[CellPlan, Tensor] | None:
        """(plan, Ā) for :func:`.fused.sparse_cell` when this view runs a one-hot cell that it covers, else None."""
        if not self.fused_cell or view.mode == DENSE or torch.is_autocast_enabled(device_type):
            return None
        if view.mode == NASP and self.nasp_alpha_step != "contract":
            return None
        kept = []
        for j in range(1, self.num_nodes + 1):
            r, i, k = self._kept(view, j)
            kept.append((r, i, None if k < 0 else self.ops[k]))
        plan = CellPlan(tuple(kept), tuple(range(1, self.num_nodes + 1)),
                        None if self.bns is None else self.bns[0].eps, view.mode == NASP, self.ops,
                        tuple(self.pairs))
        return plan, view.weights[MATRIX]

    # ---- one node under a view ------------------------------------------------------------------------------
    def _active(self, view: ArchView, r: int) -> bool:
        """Does some op of row r run with a graph (DENSE: always; else: the kept row's selected op)?"""
        if view.mode == DENSE:
            return True
        sel = view.selected[MATRIX][r]
        return sel >= 0 and sel not in self.skip

    def _gates(self, out: dict, j: int, pairs: list[tuple[int, int]], states: list[Tensor], mask_h) -> None:
        """(c, g) of node j's shared W_j for the predecessors in ``pairs``, one matmul for all of them."""
        if not pairs:
            return
        if len(pairs) == 1:
            r, i = pairs[0]
            out[r] = self.lm.cell.gates(j, states[i], mask_h)
            return
        c, g = self.lm.cell.gates(j, torch.stack([states[i] for _, i in pairs]), mask_h)   # (n, B, H) each
        for n, (r, _) in enumerate(pairs):
            out[r] = (c[n], g[n])

    def _node_fn(self, view: ArchView):
        if view.mode == NASP and self.nasp_alpha_step == "contract":
            return self._contract_node_fn(view)
        num_ops = len(self.ops)

        def node(j: int, states: list[Tensor], mask_h: Tensor | None) -> Tensor:
            rows = self.rows_of[j]
            live = [(r, i) for r, i in rows if self._active(view, r)]
            gates: dict[int, tuple[Tensor, Tensor]] = {}
            self._gates(gates, j, live, states, mask_h)
            if view.mode == SPARSE:
                rows = live              # mix returns None for every other row: skip the calls
            else:
                with torch.no_grad():   # NASP alpha step: rows whose ops all get weight 0 need values only
                    self._gates(gates, j, [(r, i) for r, i in rows if r not in gates], states, mask_h)
            outs = []
            for r, i in rows:
                c, g = gates[r]
                y = mix(view, MATRIX, r, lambda k, s=states[i], c=c, g=g: edge_output(s, c, g, self.ops[k]),
                        num_ops, self.skip)
                if y is not None:
                    outs.append(y)
            s = torch.stack(outs).sum(0) if len(outs) > 1 else (outs[0] if outs else torch.zeros_like(states[0]))
            return self.bns[j - 1](s) if self.bns is not None else s

        return node

    def _kept(self, view: ArchView, j: int) -> tuple[int, int, int]:
        """(row, predecessor, op) of node j's kept row under a one-hot view; op -1 for 'none', row -1 if none kept."""
        for r, i in self.rows_of[j]:
            k = view.selected[MATRIX][r]
            if k >= 0:
                return r, i, (-1 if k in self.skip else k)
        return -1, 0, -1

    def _contract_node_fn(self, view: ArchView):
        """NASP alpha step: the sparse forward with every node's output tapped for dL/d(node output); Ā's
        gradient is computed from the taps and the recorded states in the backward pass (:mod:`.alpha_step`)."""
        store = AlphaStore(self.ops, self.lm.cell.Ws, self.pairs)
        w = alpha_leaf(view.weights[MATRIX], store)
        kept = {j: self._kept(view, j) for j in range(1, self.num_nodes + 1)}

        def node(j: int, states: list[Tensor], mask_h: Tensor | None) -> Tensor:
            t = store.record(j, states, mask_h)
            r, i, k = kept[j]
            if k >= 0:
                c, g = self.lm.cell.gates(j, states[i], mask_h)
                y = edge_output(states[i], c, g, self.ops[k])
            else:
                y = torch.zeros_like(states[0])
            s = node_tap(w, y, store, j, t, r, k)
            return self.bns[j - 1](s) if self.bns is not None else s

        return node

    # ---- hooks ---------------------------------------------------------------------------------------------------
    def op_costs(self) -> dict[str, Tensor]:
        """Every activation of a row costs node j's shared W_j (H x 2H); 'none' costs nothing."""
        w = float(self.lm.cell.Ws[0].numel())
        cost = torch.tensor([[0.0 if o == "none" else w for o in self.ops]] * len(self.arch.specs[MATRIX].rows))
        return {MATRIX: cost}

    def genotype(self) -> Genotype:
        return derive_rnn(self.arch)

    def rnn_genotype(self) -> RNNGenotype:
        """The current cell as an :class:`RNNGenotype` (ready for :class:`RNNModel`)."""
        return RNNGenotype.from_core(self.genotype(), self.num_nodes)


class RNNModel(nn.Module):
    """Evaluation language model of a fixed recurrent cell (DARTS recipe: 850 units, tied weights).

    forward(x (T, B) int64, hidden (B, H), view=None) -> (logits (T, B, V), hidden (B, H), raw (T, B, H));
    ``view`` is accepted and ignored so the same task adapter drives search and evaluation models. The initial
    weights are a function of ``seed``.
    """

    def __init__(self, vocab_size: int, genotype: RNNGenotype, ninp: int = 850, nhid: int = 850,
                 dropout: float = 0.75, dropout_h: float = 0.25, dropout_x: float = 0.75, dropout_i: float = 0.2,
                 dropout_e: float = 0.1, weight_drop: float = 0.0, tie_weights: bool = True, seed: int = 0):
        super().__init__()
        self.genotype = genotype
        with torch.random.fork_rng(devices=[]):      # weights are a function of `seed`, global RNG untouched
            torch.manual_seed(seed)
            self.lm = LanguageModelShell(vocab_size, ninp, nhid, genotype.num_nodes, dropout, dropout_h,
                                         dropout_x, dropout_i, dropout_e, weight_drop, tie_weights)

    def init_hidden(self, batch_size: int, device=None) -> Tensor:
        return self.lm.init_hidden(batch_size, device)

    def _node(self, j: int, states: list[Tensor], mask_h: Tensor | None) -> Tensor:
        act, pred = self.genotype.recurrent[j - 1]
        c, g = self.lm.cell.gates(j, states[pred], mask_h)
        return edge_output(states[pred], c, g, act)

    def forward(self, x: Tensor, hidden: Tensor, view: ArchView | None = None, targets: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """targets (T, B): return the mean NLL instead of the logits (see :class:`.cell.LanguageModelShell`)."""
        return self.lm(x, hidden, self._node, self.genotype.concat, targets=targets)
