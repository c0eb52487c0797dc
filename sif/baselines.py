"""Classic rating models in one registry, trained and evaluated with the same code as SIF.

Every model is an ``nn.Module`` with ``forward(users, items, contexts=None) -> (B,)`` (standardised ratings) and
``forward_with_rows`` which also returns the batch's embedding rows (looked up once) for the task's penalty.
Fixed SIF interaction functions are :class:`sif.space.SIFSpace` with a single op; where a classic model combines
embeddings with one of SIF's ops (MF and GMF: multiply, NCF: concat, CP: multiply_multiply) it calls that op's
record in :data:`sif.interactions.INTERACTIONS`. ``sparse_rows=True`` gives every table (embeddings, biases,
NeuMF's MLP embeddings, the neighbourhood vectors) row-sparse gradients and row-wise optimiser updates
(:class:`nasp.optim.RowSparseOptimizer`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from nasp.optim import mark_row_sparse

from .interactions import EMBEDDING_DIM, INTERACTIONS
from .model import RatingModule
from .neighbourhood import add_neighbourhoods, make_neighbourhoods

__all__ = ["BASELINES", "register_baseline", "create_baseline", "BiasOnly", "BiasedMF", "SVDpp", "GMF", "NCF", "NeuMF",
           "OuterProduct", "CP", "TuckER"]

BASELINES: dict[str, Callable[..., nn.Module]] = {}
_MULTIPLY, _CONCAT = INTERACTIONS["multiply"], INTERACTIONS["concat"]     # the SIF op records (one home)


def register_baseline(name: str):
    def deco(cls):
        if name in BASELINES:
            raise ValueError(f"baseline {name!r} is already registered")
        BASELINES[name] = cls
        cls.registry_name = name
        return cls

    return deco


def create_baseline(name: str, **kwargs) -> nn.Module:
    """Build a registered baseline by name (kwargs: num_users, num_items, num_contexts, embedding_dim, ...)."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; registered: {sorted(BASELINES)}")
    return BASELINES[name](**kwargs)


def _embedding(n: int, k: int, std: float, g: torch.Generator, sparse: bool = False) -> nn.Embedding:
    """A table N(0, std^2); ``sparse``: row-sparse gradients and row-wise optimiser updates (nasp.optim)."""
    emb = nn.Embedding(n, k, sparse=sparse)
    with torch.no_grad():
        emb.weight.copy_(std * torch.randn(emb.weight.shape, generator=g))
    if sparse:
        mark_row_sparse(emb.weight)
    return emb


def _zero_embedding(n: int, sparse: bool = False) -> nn.Embedding:
    emb = nn.Embedding(n, 1, sparse=sparse)
    nn.init.zeros_(emb.weight)
    if sparse:
        mark_row_sparse(emb.weight)
    return emb


def _mlp(sizes: list[int], g: torch.Generator) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * (2.0 / a) ** 0.5)
            lin.bias.zero_()
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers)


class RatingModel(RatingModule):
    """Shared pieces: user/item (+context) embeddings, optional biases, the batch penalty."""

    tensor_model = False
    supports_neighbourhood = True       # False where embed() is overridden without the neighbourhood vectors

    def __init__(self, num_users: int, num_items: int, num_contexts: int = 0, embedding_dim: int = EMBEDDING_DIM,
                 use_bias: bool = True, init_std: float = 0.1, seed: int = 0, neighbourhood: str | None = None,
                 neighbourhood_reg: float = 0.5, sparse_rows: bool = False, **unused):
        super().__init__()
        if unused:
            raise TypeError(f"{type(self).__name__}: unknown argument(s) {sorted(unused)}")
        if neighbourhood not in (None, "none") and not self.supports_neighbourhood:
            raise ValueError(f"{type(self).__name__} has no neighbourhood option (got neighbourhood={neighbourhood!r})")
        if self.tensor_model and num_contexts < 1:
            raise ValueError(f"{type(self).__name__} is a tensor model: it needs contexts (num_contexts >= 1)")
        self.g = torch.Generator().manual_seed(seed)
        self.sparse_rows = sp = bool(sparse_rows)
        k = embedding_dim
        self.user = _embedding(num_users, k, init_std, self.g, sp)
        self.item = _embedding(num_items, k, init_std, self.g, sp)
        self.context = _embedding(num_contexts, k, init_std, self.g, sp) if num_contexts else None
        self.use_bias = use_bias
        if use_bias:
            self.user_bias, self.item_bias = _zero_embedding(num_users, sp), _zero_embedding(num_items, sp)
            self.global_bias = nn.Parameter(torch.zeros(()))
        self.neighbourhoods = make_neighbourhoods(neighbourhood, num_users, num_items, k, sp)
        self.neighbourhood_reg = float(neighbourhood_reg)

    def bias(self, users: Tensor, items: Tensor) -> Tensor | float:
        if not self.use_bias:
            return 0.0
        return self.global_bias + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)

    def embed(self, users: Tensor, items: Tensor, contexts: Tensor | None = None) -> dict[str, Tensor]:
        """The embedding rows of the batch, looked up once for the score and the penalty."""
        out = {"u": self.user(users), "v": self.item(items)}
        if self.context is not None and contexts is not None:
            out["c"] = self.context(contexts)
        return out

    def embed_parts(self, users: Tensor, items: Tensor, contexts: Tensor | None = None
                    ) -> tuple[dict[str, Tensor], list[Tensor]]:
        """(what the score sees: the rows plus any neighbourhood vectors, the rows the L2 penalty regularises:
        the looked-up rows and each neighbourhood vector times sqrt(neighbourhood_reg))."""
        rows = self.embed(users, items, contexts)
        if not len(self.neighbourhoods):
            return rows, list(rows.values())
        emb, neighbours = add_neighbourhoods(self.neighbourhoods, rows, {"u": users, "v": items},
                                             self.neighbourhood_reg)
        return emb, list(rows.values()) + neighbours

    def score(self, emb: dict[str, Tensor], users: Tensor, items: Tensor) -> Tensor:
        """The interaction on looked-up embeddings (B,), without biases."""
        raise NotImplementedError(f"{type(self).__name__} must implement score")   # abstract

    def forward(self, users: Tensor, items: Tensor, contexts: Tensor | None = None) -> Tensor:
        return self.forward_with_rows(users, items, contexts)[0]

    def forward_with_rows(self, users, items, contexts=None) -> tuple[Tensor, list[Tensor]]:
        """(prediction (B,), the batch's embedding rows that the task's penalty regularises)."""
        emb, rows = self.embed_parts(users, items, contexts)
        return self.score(emb, users, items) + self.bias(users, items), rows



@register_baseline("bias_only")
class BiasOnly(RatingModel):
    """global + user + item bias: no interaction at all (the floor every interaction must beat)."""

    supports_neighbourhood = False

    def __init__(self, num_users, num_items, num_contexts=0, embedding_dim=1, use_bias=True, seed=0, **kw):
        super().__init__(num_users, num_items, 0, 1, use_bias=True, seed=seed, **kw)

    def embed(self, users, items, contexts=None):
        return {"bu": self.user_bias(users), "bi": self.item_bias(items)}

    def score(self, emb, users, items):
        return 0.0


@register_baseline("mf")
class BiasedMF(RatingModel):
    """<p_u, q_i> + b_u + b_i + b (the tuned dot product of Rendle et al.); with ``neighbourhood="user"`` this is
    SVD++ (p_u + |N(u)|^-1/2 sum_j y_j), with "both" also its item-side mirror."""

    def score(self, emb, users, items):
        return _MULTIPLY(emb["u"], emb["v"]).sum(-1)


@register_baseline("svdpp")
class SVDpp(BiasedMF):
    """Biased MF with implicit feedback on both sides (SVD++ and its item-side mirror): ``neighbourhood="both"``
    unless told otherwise."""

    def __init__(self, num_users, num_items, num_contexts=0, embedding_dim=EMBEDDING_DIM, neighbourhood="both", **kw):
        super().__init__(num_users, num_items, num_contexts, embedding_dim, neighbourhood=neighbourhood, **kw)


@register_baseline("gmf")
class GMF(RatingModel):
    """h^T (p_u * q_i): generalised matrix factorisation (NCF paper), no biases by default."""

    def __init__(self, num_users, num_items, num_contexts=0, embedding_dim=EMBEDDING_DIM, use_bias=False, seed=0, **kw):
        super().__init__(num_users, num_items, 0, embedding_dim, use_bias=use_bias, seed=seed, **kw)
        self.head = nn.Linear(embedding_dim, 1, bias=False)
        with torch.no_grad():
            self.head.weight.fill_(1.0)

    def score(self, emb, users, items):
        return self.head(_MULTIPLY(emb["u"], emb["v"])).squeeze(-1)


@register_baseline("ncf")
class NCF(RatingModel):
    """MLP on [p_u; q_i] (the NCF "MLP" model): 2k -> 2k -> k -> k/2 -> 1 with ReLU."""

    def __init__(self, num_users, num_items, num_contexts=0, embedding_dim=EMBEDDING_DIM, use_bias=False, seed=0, **kw):
        super().__init__(num_users, num_items, 0, embedding_dim, use_bias=use_bias, seed=seed, **kw)
        k = embedding_dim
        self.mlp = _mlp([2 * k, 2 * k, k, max(k // 2, 1)], self.g)
        self.out = nn.Linear(max(k // 2, 1), 1)

    def score(self, emb, users, items):
        return self.out(self.mlp(_CONCAT(emb["u"], emb["v"]))).squeeze(-1)


@register_baseline("neumf")
class NeuMF(RatingModel):
    """NeuMF: a GMF branch and an MLP branch with separate embeddings, fused by a linear layer."""

    supports_neighbourhood = False

    def __init__(self, num_users, num_items, num_contexts=0, embedding_dim=EMBEDDING_DIM, use_bias=False, init_std=0.1,
                 seed=0, **kw):
        super().__init__(num_users, num_items, 0, embedding_dim, use_bias=use_bias, init_std=init_std, seed=seed,
                         **kw)
        k = embedding_dim
        self.user_mlp = _embedding(num_users, k, init_std, self.g, self.sparse_rows)
        self.item_mlp = _embedding(num_items, k, init_std, self.g, self.sparse_rows)
        self.mlp = _mlp([2 * k, 2 * k, k, max(k // 2, 1)], self.g)
        self.out = nn.Linear(k + max(k // 2, 1), 1)

    def embed(self, users, items, contexts=None):
        return {"u": self.user(users), "v": self.item(items), "um": self.user_mlp(users), "vm": self.item_mlp(items)}

    def score(self, emb, users, items):
        mlp = self.mlp(_CONCAT(emb["um"], emb["vm"]))
        return self.out(torch.cat([_MULTIPLY(emb["u"], emb["v"]), mlp], dim=-1)).squeeze(-1)


@register_baseline("outer")
class OuterProduct(RatingModel):
    """Linear head on the flattened outer product p_u q_i^T (ConvNCF's interaction map, without the CNN)."""

    def __init__(self, num_users, num_items, num_contexts=0, embedding_dim=EMBEDDING_DIM, use_bias=False, seed=0, **kw):
        super().__init__(num_users, num_items, 0, embedding_dim, use_bias=use_bias, seed=seed, **kw)
        self.head = nn.Linear(embedding_dim * embedding_dim, 1, bias=False)

    def score(self, emb, users, items):
        outer = (emb["u"].unsqueeze(-1) * emb["v"].unsqueeze(-2)).flatten(1)     # (B, k*k)
        return self.head(outer).squeeze(-1)


@register_baseline("cp")
class CP(RatingModel):
    """CP decomposition for (user, item, context): sum_r p_ur q_ir c_cr (+ biases)."""

    tensor_model = True

    def score(self, emb, users, items):
        return _MULTIPLY(_MULTIPLY(emb["u"], emb["v"]), emb["c"]).sum(-1)     # multiply_multiply


@register_baseline("tucker")
class TuckER(RatingModel):
    """TuckER: core tensor W (k, k, k) contracted with user, item and context embeddings (+ biases)."""

    tensor_model = True

    def __init__(self, num_users, num_items, num_contexts=0, embedding_dim=EMBEDDING_DIM, seed=0, **kw):
        super().__init__(num_users, num_items, num_contexts, embedding_dim, seed=seed, **kw)
        k = embedding_dim
        self.core = nn.Parameter(torch.randn(k, k, k, generator=self.g) / k)

    def score(self, emb, users, items):
        return torch.einsum("bi,bj,bk,ijk->b", emb["u"], emb["v"], emb["c"], self.core)
