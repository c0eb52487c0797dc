"""nasp.optim.make_optimizer: fused kernels where the device has them, the same updates as the foreach path."""

import pytest
import torch

from nasp.optim import OPTIMIZERS, make_optimizer


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in [(5, 3), (2, 1, 8), (4,)]]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_matches_foreach(name):
    runs = []
    for fused in (True, False):
        ps = _params()
        opt = make_optimizer(name, [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.003}], lr=0.05,
                             weight_decay=0.01, momentum=0.9, fused=fused)
        assert opt.defaults.get("fused") is (True if fused and name != "sgd" else None)
        for step in range(5):
            for i, p in enumerate(ps):      # like a NAS weight step: the last tensor gets grads from step 2 on
                p.grad = torch.sin(p.detach() * (step + i + 1)) if i < 2 or step >= 2 else None
            opt.step()
        runs.append([p.detach().clone() for p in ps])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_group_lr_and_errors():
    ps = _params()
    opt = make_optimizer("adam", [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.1}], lr=0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("lbfgs", ps, lr=0.1)


# ---- FlatUpdate: planned steps with gradients in one flat buffer ----------------------------------------------
def _twin_runs(name, fused, steps=6, clip=None, patterns=((0, 1), (0, 1, 2), (1, 2))):
    """(params stepped by FlatUpdate, params stepped by opt.step() with the same gradients)."""
    from nasp.optim import FlatUpdate

    out = []
    for flat in (True, False):
        ps = _params()
        opt = make_optimizer(name, ps, lr=0.05, weight_decay=0.01, momentum=0.9, fused=fused)
        up = FlatUpdate(opt) if flat else None
        for step in range(steps):
            idx = patterns[step % len(patterns)]
            grads = [torch.cos(p.detach() * (step + 1)) for p in ps]
            if flat:
                up.flat.zero_()
                for i in idx:
                    up.views[i].copy_(grads[i])
                if clip:
                    up.clip_(clip)
                up.step(idx)
            else:
                for i, p in enumerate(ps):
                    p.grad = grads[i].clone() if i in idx else None
                if clip:
                    torch.nn.utils.clip_grad_norm_([p for p in ps if p.grad is not None], clip)
                opt.step()
        out.append((ps, opt))
    return out


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_flat_update_equals_optimizer_step(name, fused):
    (a, opt_a), (b, opt_b) = _twin_runs(name, fused, clip=0.5)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for key in sa[k]:
            torch.testing.assert_close(sa[k][key], sb[k][key], rtol=1e-12, atol=1e-12)


def test_flat_update_uses_the_kernel_only_where_it_is_safe(monkeypatch):
    from nasp.optim import FlatUpdate

    assert FlatUpdate(make_optimizer("adam", _params(), lr=0.1)).kernel[0] == "adam"
    assert FlatUpdate(make_optimizer("adamw", _params(), lr=0.1)).kernel[0] == "adamw"
    assert FlatUpdate(make_optimizer("adam", _params(), lr=0.1, fused=False)).kernel is None
    assert FlatUpdate(make_optimizer("sgd", _params(), lr=0.1)).kernel is None
    hooked = make_optimizer("adagrad", _params(), lr=0.1)
    hooked.register_step_post_hook(lambda *args: None)
    assert FlatUpdate(hooked).kernel is None                       # hooks run only through optimizer.step()
    import nasp.optim

    monkeypatch.setitem(nasp.optim._KERNELS, "adagrad", "_no_such_fused_adagrad_")   # a torch without the kernel
    assert FlatUpdate(make_optimizer("adagrad", _params(), lr=0.1)).kernel is None
    (a, _), (b, _) = _twin_runs("adagrad", True)                  # ... still steps, through optimizer.step()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_flat_update_rejects_mixed_dtypes():
    from nasp.optim import FlatUpdate

    ps = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))]
    with pytest.raises(ValueError, match="mixed dtypes"):
        FlatUpdate(torch.optim.SGD(ps, lr=0.1))
