"""The DARTS recurrent cell and the language-model shell around it (shared by search and evaluation models).

Cell (per time step, hidden size H): node 0 is a highway layer on (x_t, h_{t-1}):
``c, g = split(W0 [x_t; h_{t-1}])``, ``s0 = h + sigmoid(c) * (tanh(g) - h)``. Node j = 1..N has ONE linear map
W_j (H -> 2H) shared by all of its incoming edges: an edge from state s_i with activation f computes
``(c, g) = split(W_j s_i)``, ``s_i + sigmoid(c) * (f(g) - s_i)``. The cell output (next hidden state) is the mean
of the nodes in ``concat``. Which predecessor and activation each node uses is decided by a ``node_fn``
supplied by the owning model (a mixture in the search model, a fixed choice in the evaluation model).

Regularisation (AWD-LSTM / DARTS recipe), all active only in training mode: embedding dropout (whole words),
locked (variational) dropout on the embedded inputs, on the cell's x input and hidden states (one mask per
sequence, reused at every time step) and on the outputs; optional weight drop (DropConnect) on the recurrent
part of W0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasp.buffers import BufferPool

from .decoder import decoder_nll, low_linear
from .fused import CellPlan, sparse_cell

__all__ = ["ACTIVATIONS", "RecurrentCell", "LanguageModelShell", "edge_output", "locked_mask", "embedded_dropout",
           "autocast_low"]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,     # not nasp.fastmath's: through autograd its Function costs as much as it saves
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}

# node_fn(j, states, mask_h) -> s_j (B, H); states: [s_0, ..., s_{j-1}]
NodeFn = Callable[[int, list[Tensor], Tensor | None], Tensor]


def autocast_low(device_type: str) -> torch.dtype | None:
    """The dtype of the autocast region active on ``device_type`` (the search's ``amp``), else None."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def locked_mask(like: Tensor, shape: tuple[int, ...], p: float, training: bool) -> Tensor | None:
    """A dropout mask of ``shape`` (scaled by 1 / (1 - p)), or None when not training or p == 0."""
    if not training or p <= 0:
        return None
    return like.new_empty(shape).bernoulli_(1 - p).div_(1 - p)


def embedded_dropout(embed: nn.Embedding, x: Tensor, p: float, training: bool) -> Tensor:
    """Embedding lookup with whole-word dropout: each vocabulary row is dropped with probability p."""
    weight = embed.weight
    if training and p > 0:
        weight = weight * locked_mask(weight, (weight.shape[0], 1), p, True)
    return F.embedding(x, weight)


def edge_output(s: Tensor, c: Tensor, g: Tensor, act: str) -> Tensor:
    """s + sigmoid(c) * (f(g) - s), all (..., B, H)."""
    return s + torch.sigmoid(c) * (ACTIVATIONS[act](g) - s)


class RecurrentCell(nn.Module):
    """The highway node's W0 ((ninp + H) x 2H) and one W_j (H x 2H) per intermediate node, unrolled over time."""

    def __init__(self, ninp: int, nhid: int, num_nodes: int = 8, dropout_x: float = 0.75, dropout_h: float = 0.25,
                 weight_drop: float = 0.0, init_range: float = 0.04):
        super().__init__()
        self.ninp, self.nhid, self.num_nodes = ninp, nhid, num_nodes
        self.dropout_x, self.dropout_h, self.weight_drop = dropout_x, dropout_h, weight_drop
        self.W0 = nn.Parameter(torch.empty(ninp + nhid, 2 * nhid).uniform_(-init_range, init_range))
        self.Ws = nn.Parameter(torch.empty(num_nodes, nhid, 2 * nhid).uniform_(-init_range, init_range))
        self.buffer_pool = BufferPool()     # the fused cell's work buffers, reused across steps

    def gates(self, j: int, states: Tensor, mask_h: Tensor | None) -> tuple[Tensor, Tensor]:
        """(c, g) of node j's shared linear map on predecessor states (..., B, H) -> two (..., B, H)."""
        if mask_h is not None:
            states = states * mask_h
        return (states @ self.Ws[j - 1]).chunk(2, dim=-1)

    def forward(self, x: Tensor, h: Tensor, node_fn: NodeFn | None, concat: tuple[int, ...] | None = None,
                fused: tuple[CellPlan, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """x: (T, B, ninp) embedded inputs; h: (B, H). Returns (outputs (T, B, H), last hidden (B, H)).
        fused: (plan, Ā) of a one-hot cell to run as :func:`.fused.sparse_cell` instead of ``node_fn`` per node
        (the same dropout masks, drawn in the same order)."""
        T, B = x.shape[:2]
        mask_x = locked_mask(x, (B, self.ninp), self.dropout_x, self.training)
        mask_h = locked_mask(x, (B, self.nhid), self.dropout_h, self.training)
        w_x, w_h = self.W0[: self.ninp], self.W0[self.ninp:]
        if self.training and self.weight_drop > 0:
            w_h = F.dropout(w_h, self.weight_drop, training=True)
        xw = (x if mask_x is None else x * mask_x) @ w_x                  # (T, B, 2H), all steps at once
        if fused is not None:
            return sparse_cell(xw, h, w_h, self.Ws, fused[1], mask_h, fused[0], self.buffer_pool)
        concat = concat or tuple(range(1, self.num_nodes + 1))
        outs = []
        for t in range(T):
            hm = h if mask_h is None else h * mask_h
            c0, g0 = (xw[t] + hm @ w_h).chunk(2, dim=-1)
            states = [h + torch.sigmoid(c0) * (torch.tanh(g0) - h)]       # s_0 (B, H)
            for j in range(1, self.num_nodes + 1):
                states.append(node_fn(j, states, mask_h))
            h = torch.stack([states[c] for c in concat]).mean(0)          # (B, H)
            outs.append(h)
        return torch.stack(outs), h


class LanguageModelShell(nn.Module):
    """Embedding (tied with the decoder), input/output dropouts and the recurrent cell.

    forward(x (T, B) int64, hidden (B, H), node_fn) -> (logits (T, B, V), hidden (B, H), raw outputs (T, B, H));
    with ``targets`` (T, B) int64 the first item is instead the mean NLL of the targets (scalar, float32 at least),
    through :func:`.decoder.decoder_nll` (the logits are never returned; their buffers come from the cell's pool;
    ``fused_decoder = False``: through ``F.linear`` + ``F.cross_entropy`` instead, the same values).
    Mixed precision (an autocast region, e.g. the search's ``amp: bf16``; or ``low``): only the tied decoder's
    products take the low dtype (bfloat16 operands, see :mod:`.decoder`); embedding, cell and cross-entropy run
    in float32 with autocast off, for every strategy alike (the cell's small products gain nothing from it).
    """

    def __init__(self, vocab_size: int, ninp: int, nhid: int, num_nodes: int = 8, dropout: float = 0.75,
                 dropout_h: float = 0.25, dropout_x: float = 0.75, dropout_i: float = 0.2, dropout_e: float = 0.0,
                 weight_drop: float = 0.0, tie_weights: bool = True, init_range: float = 0.04):
        super().__init__()
        if tie_weights and ninp != nhid:
            raise ValueError(f"tie_weights needs ninp == nhid, got ninp={ninp}, nhid={nhid}")
        self.vocab_size, self.ninp, self.nhid = vocab_size, ninp, nhid
        self.dropout, self.dropout_i, self.dropout_e = dropout, dropout_i, dropout_e
        self.encoder = nn.Embedding(vocab_size, ninp)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        self.cell = RecurrentCell(ninp, nhid, num_nodes, dropout_x, dropout_h, weight_drop, init_range)
        self.decoder_weight = None if tie_weights else nn.Parameter(torch.empty(vocab_size, nhid).uniform_(-0.1, 0.1))
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))
        self.fused_decoder = True

    def init_hidden(self, batch_size: int, device=None) -> Tensor:
        w = self.encoder.weight
        return torch.zeros(batch_size, self.nhid, device=device or w.device, dtype=w.dtype)

    def forward(self, x: Tensor, hidden: Tensor, node_fn: NodeFn | None, concat: tuple[int, ...] | None = None,
                fused: tuple[CellPlan, Tensor] | None = None, targets: Tensor | None = None,
                low: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """low: the decoder products' dtype (None: that of an active autocast region, else none)."""
        low = low or autocast_low(x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            emb = embedded_dropout(self.encoder, x, self.dropout_e, self.training)      # (T, B, ninp)
            m_i = locked_mask(emb, (1, emb.shape[1], self.ninp), self.dropout_i, self.training)
            raw, hidden = self.cell(emb if m_i is None else emb * m_i, hidden, node_fn, concat, fused)
            m_o = locked_mask(raw, (1, raw.shape[1], self.nhid), self.dropout, self.training)
            out = raw if m_o is None else raw * m_o
            weight = self.encoder.weight if self.decoder_weight is None else self.decoder_weight
            if targets is not None:
                nll = decoder_nll(out.reshape(-1, out.shape[-1]), weight, self.decoder_bias, targets.reshape(-1),
                                  self.cell.buffer_pool, self.fused_decoder, low)
                return nll, hidden, raw
            return low_linear(out, weight, self.decoder_bias, low), hidden, raw
