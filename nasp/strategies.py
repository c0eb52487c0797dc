"""One step of each search strategy, on any search space and task.

- ``nasp``: the proximal step of NASP (algorithms.md section 1): Ā = prox_C1(A); validation loss + R(Ā) at Ā;
  its gradient w.r.t. Ā updates the continuous A (Adam); A = prox_C2(A); Ā again; weight step on a training
  batch with only the selected ops. The alpha step runs non-selected ops without weight graphs (exact).
- ``darts1`` / ``darts2``: DARTS first order, and second order with the unrolled finite-difference term.
- ``random``: weight-sharing random search: weights trained on uniform samples of C1; the architecture is
  picked on validation at the end of each epoch (see :class:`nasp.search.Searcher`).

Each step returns detached scalar tensors (no host sync). Device->host transfers per step (the minimum the
algorithms allow; counted by tests/test_syncs.py):

- ``nasp``: ONE per alpha update: the op choice of the updated A is data dependent and the SPARSE forward needs
  it as Python ints. Ā and that selection are cached (:meth:`nasp.arch.ArchParameters.projection`), so the weight
  step after the update and the next alpha step reuse them; a step without an alpha update (``alpha_every > 1``)
  transfers nothing.
- ``darts1`` / ``darts2``: none (dense mixtures need no selection; the finite-difference epsilon stays a tensor).
- ``random`` (and every warm-up step): none (the architecture is drawn on the CPU, see ``random_view``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from .optim import clip_grad_norm_
from .regularizers import complexity

if TYPE_CHECKING:
    from .search import Searcher

__all__ = ["STRATEGIES", "weight_step", "nasp_alpha_grads", "darts_alpha_grads", "unrolled_alpha_grads"]


def _grads(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Gradients of ``loss`` w.r.t. ``params`` only (no accumulation into other leaves); unused -> zeros."""
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params, strict=True)]


def _assign_grads(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.detach().to(p.dtype)


def _sync(s: Searcher, grads: Sequence[Tensor]) -> None:
    """Average ``grads`` in place across data-parallel ranks (no-op in a single process)."""
    sync = getattr(s, "grad_sync", None)
    if sync is not None:
        sync(list(grads))


def weight_step(s: Searcher, batch, view) -> Tensor:
    """One optimiser step on the network weights with the training loss under ``view``."""
    s.w_opt.zero_grad(set_to_none=True)
    with s.autocast():
        loss = s.task_loss(s.model, batch, view, "train")
    loss.backward()
    _sync(s, [p.grad for p in s.weight_params if p.grad is not None])
    if s.config.grad_clip:
        clip_grad_norm_(s.weight_params, s.config.grad_clip)     # torch's; also takes row-sparse tables
    s.w_opt.step()
    s.model.after_weight_step()
    return loss.detach()


def _alpha_loss(s: Searcher, batch, view) -> tuple[Tensor, Tensor]:
    with s.autocast():
        loss = s.task_loss(s.model, batch, view, "valid")
    reg = complexity(view.weights, s.op_costs, s.config.eta)
    return loss, loss if reg is None else loss + reg


def nasp_alpha_grads(s: Searcher, batch) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """dL_val/dĀ (applied to A) and the grads of the alpha-step extra weights. Returns (loss, alpha grads,
    extra grads)."""
    view = s.model.arch.nasp_view()
    loss, total = _alpha_loss(s, batch, view)
    leaves = list(view.weights.values())
    grads = _grads(total, leaves + s.extra_params)
    return loss.detach(), grads[: len(leaves)], grads[len(leaves):]


def darts_alpha_grads(s: Searcher, batch) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """First-order DARTS: dL_val(w, softmax(A))/dA at the current weights."""
    view = s.model.arch.softmax_view()
    loss, total = _alpha_loss(s, batch, view)
    grads = _grads(total, s.alpha_params + s.extra_params)
    return loss.detach(), grads[: len(s.alpha_params)], grads[len(s.alpha_params):]


@torch.no_grad()
def _set_weights(params: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    for p, v in zip(params, values, strict=True):
        p.copy_(v)


def _virtual_direction(s: Searcher, train_grads: list[Tensor]) -> list[Tensor]:
    """The weight optimiser's SGD update direction (momentum buffer + grad + weight decay), as DARTS unrolls."""
    cfg = s.config
    out = []
    for p, g in zip(s.weight_params, train_grads, strict=True):
        buf = s.w_opt.state.get(p, {}).get("momentum_buffer") if cfg.w_optimizer == "sgd" else None
        d = g + cfg.w_weight_decay * p.detach()
        if buf is not None:
            d = d + cfg.w_momentum * buf
        out.append(d)
    return out


def unrolled_alpha_grads(s: Searcher, train_batch, valid_batch) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Second-order DARTS: grad_A L_val(w', A) - xi * [grad_A L_train(w+, A) - grad_A L_train(w-, A)] / (2 eps),
    w' = w - xi * dir(grad_w L_train(w, A)), w± = w ± eps * grad_w' L_val(w', A), eps = 0.01 / ||grad_w' L_val||.
    """
    arch, W = s.model.arch, s.weight_params
    xi = s.w_opt.param_groups[0]["lr"]
    w0 = [p.detach().clone() for p in W]
    with torch.no_grad():
        fixed = arch.softmax_view()
    with s.autocast():
        lt = s.task_loss(s.model, train_batch, fixed, "train")
    train_grads = _grads(lt, W)
    _sync(s, train_grads)                     # the same virtual step w' on every rank
    direction = _virtual_direction(s, train_grads)
    _set_weights(W, [w - xi * d for w, d in zip(w0, direction, strict=True)])             # w'
    view = arch.softmax_view()
    loss, total = _alpha_loss(s, valid_batch, view)
    grads = _grads(total, s.alpha_params + s.extra_params + W)
    na, ne = len(s.alpha_params), len(s.extra_params)
    d_alpha, d_extra, d_w = grads[:na], grads[na: na + ne], grads[na + ne:]
    _sync(s, d_w)                             # the same eps and w± on every rank
    eps = 0.01 / torch.sqrt(sum((g.float() ** 2).sum() for g in d_w)).clamp_min(1e-12)
    hessian = []
    for sign in (1.0, -1.0):
        _set_weights(W, [w + sign * eps * g for w, g in zip(w0, d_w, strict=True)])
        view_pm = arch.softmax_view()
        with s.autocast():
            l_pm = s.task_loss(s.model, train_batch, view_pm, "train")
        hessian.append(_grads(l_pm, s.alpha_params))
    _set_weights(W, w0)
    final = [da - xi * (hp - hm) / (2 * eps) for da, hp, hm in zip(d_alpha, *hessian, strict=True)]
    return loss.detach(), final, d_extra


def _alpha_update(s: Searcher, alpha_grads: list[Tensor], extra_grads: list[Tensor]) -> None:
    _sync(s, list(alpha_grads) + list(extra_grads))
    s.a_opt.zero_grad(set_to_none=True)
    _assign_grads(s.alpha_params, alpha_grads)
    _assign_grads(s.extra_params, extra_grads)
    s.a_opt.step()
    # torch's fused optimiser kernels do not bump version counters; ArchParameters' projection cache keys on them
    increment_version(s.alpha_params)


def step_nasp(s: Searcher, train_batch, valid_batch, update_alpha: bool) -> dict[str, Tensor]:
    fused = getattr(s, "fused_step", None)
    if fused is not None:             # the space's hand-fused equivalent (config.fused, see Searcher)
        return fused(train_batch, valid_batch, update_alpha)
    out = {}
    if update_alpha:
        with s.timer("alpha"):
            loss, ga, ge = nasp_alpha_grads(s, valid_batch)
            _alpha_update(s, ga, ge)
            s.model.arch.prox_c2_()
        out["alpha_loss"] = loss
    with s.timer("weight"):
        out["train_loss"] = weight_step(s, train_batch, s.model.arch.sparse_view())
    return out


def _step_darts(s: Searcher, train_batch, valid_batch, update_alpha: bool, second: bool) -> dict[str, Tensor]:
    out = {}
    if update_alpha:
        with s.timer("alpha"):
            if second:
                loss, ga, ge = unrolled_alpha_grads(s, train_batch, valid_batch)
            else:
                loss, ga, ge = darts_alpha_grads(s, valid_batch)
            _alpha_update(s, ga, ge)
        out["alpha_loss"] = loss
    with s.timer("weight"):
        with torch.no_grad():
            view = s.model.arch.softmax_view()
        out["train_loss"] = weight_step(s, train_batch, view)
    return out


def step_darts1(s, train_batch, valid_batch, update_alpha):
    return _step_darts(s, train_batch, valid_batch, update_alpha, second=False)


def step_darts2(s, train_batch, valid_batch, update_alpha):
    return _step_darts(s, train_batch, valid_batch, update_alpha, second=True)


def step_random(s: Searcher, train_batch, valid_batch, update_alpha: bool) -> dict[str, Tensor]:
    """Weight step on a uniform random point of C1 (also the warm-up of every strategy)."""
    with s.timer("weight"):
        return {"train_loss": weight_step(s, train_batch, s.model.arch.random_view(s.arch_generator))}


STRATEGIES = {"nasp": step_nasp, "darts1": step_darts1, "darts2": step_darts2, "random": step_random}
