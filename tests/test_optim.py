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
