"""Interaction functions between embeddings: ONE record per op (the INTERACTIONS registry) and the two-stage
tensor candidates built from them.

A record (:class:`Interaction`) is the single home of an op's math: its forward ``fn(a, b) -> out``, the closed-form
gradient ``grad(a, b, dout) -> (dout/da, dout/db)`` (the vector-Jacobian products; a hand-written step needs them),
its head width (``width * k``: k, or 2k for concat) and the scale of the effective L2 penalty
(:meth:`sif.space.SIFSpace.effective_penalty`) with its derivative. The search space, the fused step
(:mod:`sif.fused`), evaluation and the fixed-op baselines all read these records; tests/test_interaction_records.py
checks every record against autograd.

Vector-wise ops combine two (B, k) tensors: ``plus``, ``multiply``, ``max``, ``min`` give (B, k); ``concat`` gives
(B, 2k). For (user, item, context) tensors a candidate is a two-stage op ``op2(op1(a, b), c)`` over the three
pairings of the inputs. Element-wise op2 needs op1's output to be (B, k), so op1 = concat only combines with
op2 = concat. Candidates that are the same function for every pairing (plus_plus, multiply_multiply, max_max,
min_min, concat_concat: associative and commutative, concat up to a permutation that the linear head absorbs)
appear once, which leaves 53 candidates; the triple product ``u * v * c`` is ``multiply_multiply``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["INTERACTIONS", "PRIMITIVES", "MIXTURES", "SEARCH_SPACE", "EMBEDDING_DIM", "Interaction",
           "register_interaction", "mixture", "out_dim", "TensorCandidate", "tensor_candidates"]


@dataclass(frozen=True)
class Interaction:
    """One vector-wise op: ``fn(a (B, k), b (B, k), out=None) -> (B, width * k)``; ``grad(a, b, dout) -> (da, db)``
    the closed-form gradients of ``<dout, fn(a, b)>`` w.r.t. a and b (each shaped like its input; a may be wider
    than b when the op is concat); ``penalty_scale(w (width * k,), k)`` the per-feature weight of the effective
    L2 penalty and ``penalty_scale_grad`` its derivative w.r.t. w."""

    name: str
    fn: Callable[..., Tensor]
    grad: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    width: int
    penalty_scale: Callable[[Tensor, int], Tensor]
    penalty_scale_grad: Callable[[Tensor, int], Tensor]
    split_sides: bool = False   # True: the j-th block of k output columns sees input j alone (concat); False: every
    #                             block sees both inputs (the element-wise ops and their mixtures)

    def __call__(self, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
        return self.fn(a, b, out=out)

    def out_dim(self, k: int) -> int:
        """Head width on k-dimensional inputs."""
        return self.width * k


INTERACTIONS: dict[str, Interaction] = {}


def register_interaction(op: Interaction) -> Interaction:
    """Add ``op`` to :data:`INTERACTIONS` under ``op.name`` (a name is registered once)."""
    if op.name in INTERACTIONS:
        raise ValueError(f"interaction {op.name!r} is already registered")
    INTERACTIONS[op.name] = op
    return op


# effective-penalty scales: |w| for the bilinear multiply (biased MF's L2 at w = 1), k w^2 for the ops linear in
# each input (see SIFSpace.effective_penalty)
def _abs_scale(w: Tensor, k: int) -> Tensor:
    return w.abs()


def _abs_scale_grad(w: Tensor, k: int) -> Tensor:
    return torch.sign(w)


def _square_scale(w: Tensor, k: int) -> Tensor:
    return k * (w * w)


def _square_scale_grad(w: Tensor, k: int) -> Tensor:
    return (2 * k) * w


def _winner(a: Tensor, b: Tensor) -> Tensor:
    """1 where a > b, 0 where a < b, 1/2 on ties (torch's split of max/min gradients)."""
    return torch.sign(a - b).mul_(0.5).add_(0.5)


register_interaction(Interaction(
    "plus", lambda a, b, out=None: torch.add(a, b, out=out), lambda a, b, d: (d, d), 1, _square_scale,
    _square_scale_grad))
register_interaction(Interaction(
    "multiply", lambda a, b, out=None: torch.mul(a, b, out=out), lambda a, b, d: (d * b, d * a), 1, _abs_scale,
    _abs_scale_grad))
register_interaction(Interaction(
    "max", lambda a, b, out=None: torch.maximum(a, b, out=out),
    lambda a, b, d: (d * _winner(a, b), d * _winner(b, a)), 1, _square_scale, _square_scale_grad))
register_interaction(Interaction(
    "min", lambda a, b, out=None: torch.minimum(a, b, out=out),
    lambda a, b, d: (d * _winner(b, a), d * _winner(a, b)), 1, _square_scale, _square_scale_grad))
register_interaction(Interaction(
    "concat", lambda a, b, out=None: torch.cat([a, b], dim=-1, out=out),
    lambda a, b, d: (d[:, : a.shape[-1]], d[:, a.shape[-1]:]), 2, _square_scale, _square_scale_grad,
    split_sides=True))

PRIMITIVES: tuple[str, ...] = ("plus", "multiply", "max", "min", "concat")


def mixture(first: str, second: str) -> Interaction:
    """The learned mixture ``w1^T first(a, b) + w2^T second(a, b)`` of two element-wise ops as one op: its output is
    the two outputs side by side (B, 2k), so the one linear head learns the mixing weights per dimension; named
    ``"first+second"``. Gradients and the effective-penalty scale are those of the parts, block by block."""
    ops = (INTERACTIONS[first], INTERACTIONS[second])
    if any(op.width != 1 for op in ops):
        raise ValueError(f"a mixture combines element-wise ops (width 1), got {first!r} and {second!r}")

    def fn(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
        return torch.cat([op(a, b) for op in ops], dim=-1, out=out)

    def grad(a: Tensor, b: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        k = a.shape[-1]
        (da1, db1), (da2, db2) = (op.grad(a, b, d[:, j * k:(j + 1) * k]) for j, op in enumerate(ops))
        return da1 + da2, db1 + db2

    def blocks(fns: tuple[Callable, Callable]) -> Callable[[Tensor, int], Tensor]:
        return lambda w, k: torch.cat([fns[0](w[:k], k), fns[1](w[k:], k)])

    return Interaction(f"{first}+{second}", fn, grad, 2, blocks(tuple(op.penalty_scale for op in ops)),
                       blocks(tuple(op.penalty_scale_grad for op in ops)))


#: learned two-op mixtures in the default search space: on ML-100K (the quick start with neighbourhoods) multiply+max
#: beat fixed multiply and biased MF on 3 of 3 seeds and MF on 4 of 5 folds at the same L2; MF with twice the L2
#: comes within 0.001 of it, so much of the gain is regularisation (benchmarks/README.md, "The quick start with
#: neighbourhoods"). multiply+plus collapses like plus; multiply+min behaves like multiply+max.
MIXTURES: tuple[str, ...] = ("multiply+max",)
for _first, _second in (m.split("+") for m in MIXTURES):
    register_interaction(mixture(_first, _second))
SEARCH_SPACE: tuple[str, ...] = PRIMITIVES + MIXTURES    # the matrix case's candidates when none are named
EMBEDDING_DIM = 32      # the one default width of the embeddings every op combines (every SIF model and config)


def out_dim(name: str, k: int) -> int:
    """Output width of interaction ``name`` on k-dimensional inputs."""
    return INTERACTIONS[name].out_dim(k)


# ---- tensor (user, item, context) candidates ----------------------------------------------------------------
PAIRINGS = (("u", "v", "c"), ("u", "c", "v"), ("v", "c", "u"))   # (first pair, third input)


@dataclass(frozen=True)
class TensorCandidate:
    """``op2(op1(x, y), z)`` with (x, y, z) a pairing of (u, v, c); its math is that of the two records."""

    op1: str
    op2: str
    pairing: tuple[str, str, str]

    @property
    def name(self) -> str:
        x, y, z = self.pairing
        symmetric = self.op1 == self.op2
        return f"{self.op1}_{self.op2}" if symmetric else f"{self.op1}({x},{y})_{self.op2}({z})"

    def __call__(self, inputs: dict[str, Tensor]) -> Tensor:
        x, y, z = (inputs[s] for s in self.pairing)
        return INTERACTIONS[self.op2](INTERACTIONS[self.op1](x, y), z)

    def grad(self, inputs: dict[str, Tensor], dout: Tensor) -> dict[str, Tensor]:
        """Closed-form gradients of ``<dout, self(inputs)>`` per side (B, k), by the chain rule over the records."""
        x, y, z = (inputs[s] for s in self.pairing)
        inner = INTERACTIONS[self.op1](x, y)
        d_inner, dz = INTERACTIONS[self.op2].grad(inner, z, dout)
        dx, dy = INTERACTIONS[self.op1].grad(x, y, d_inner)
        return dict(zip(self.pairing, (dx, dy, dz), strict=True))

    def out_dim(self, k: int) -> int:
        return out_dim(self.op1, k) + k if self.op2 == "concat" else k


def tensor_candidates(ops: tuple[str, ...] = PRIMITIVES) -> tuple[TensorCandidate, ...]:
    """Every distinct two-stage candidate (53 for the 5 primitives), in a fixed order."""
    out: list[TensorCandidate] = []
    for op1 in ops:
        for op2 in ops:
            if INTERACTIONS[op1].width > 1 and INTERACTIONS[op2].width == 1:
                continue       # element-wise op2 cannot take a wider op1 output
            pairings = PAIRINGS[:1] if op1 == op2 else PAIRINGS
            out.extend(TensorCandidate(op1, op2, p) for p in pairings)
    return tuple(out)
