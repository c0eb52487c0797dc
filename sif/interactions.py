"""Interaction functions between embeddings: the INTERACTIONS registry and the two-stage tensor candidates.

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

__all__ = ["INTERACTIONS", "PRIMITIVES", "register_interaction", "out_dim", "TensorCandidate", "tensor_candidates"]

INTERACTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
_WIDTH: dict[str, int] = {}


def register_interaction(name: str, width: int = 1):
    """Register ``fn(a (B, k), b (B, k)) -> (B, width * k)`` under ``name``."""

    def deco(fn):
        if name in INTERACTIONS:
            raise ValueError(f"interaction {name!r} is already registered")
        INTERACTIONS[name], _WIDTH[name] = fn, width
        return fn

    return deco


@register_interaction("plus")
def _plus(a: Tensor, b: Tensor) -> Tensor:
    return a + b


@register_interaction("multiply")
def _multiply(a: Tensor, b: Tensor) -> Tensor:
    return a * b


@register_interaction("max")
def _max(a: Tensor, b: Tensor) -> Tensor:
    return torch.maximum(a, b)


@register_interaction("min")
def _min(a: Tensor, b: Tensor) -> Tensor:
    return torch.minimum(a, b)


@register_interaction("concat", width=2)
def _concat(a: Tensor, b: Tensor) -> Tensor:
    return torch.cat([a, b], dim=-1)


PRIMITIVES: tuple[str, ...] = ("plus", "multiply", "max", "min", "concat")


def out_dim(name: str, k: int) -> int:
    """Output width of interaction ``name`` on k-dimensional inputs."""
    return _WIDTH[name] * k


# ---- tensor (user, item, context) candidates ----------------------------------------------------------------
PAIRINGS = (("u", "v", "c"), ("u", "c", "v"), ("v", "c", "u"))   # (first pair, third input)


@dataclass(frozen=True)
class TensorCandidate:
    """``op2(op1(x, y), z)`` with (x, y, z) a pairing of (u, v, c)."""

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

    def out_dim(self, k: int) -> int:
        return out_dim(self.op1, k) + k if self.op2 == "concat" else k


def tensor_candidates(ops: tuple[str, ...] = PRIMITIVES) -> tuple[TensorCandidate, ...]:
    """Every distinct two-stage candidate (53 for the 5 primitives), in a fixed order."""
    out: list[TensorCandidate] = []
    for op1 in ops:
        for op2 in ops:
            if _WIDTH[op1] > 1 and _WIDTH[op2] == 1:
                continue       # element-wise op2 cannot take a wider op1 output
            pairings = PAIRINGS[:1] if op1 == op2 else PAIRINGS
            out.extend(TensorCandidate(op1, op2, p) for p in pairings)
    return tuple(out)
