"""Sweep over covered and uncovered settings of the fused SIF step: every combination is either refused
(FusedStepUnsupported, and the searcher falls back to the generic step) or gives the generic step's losses,
alphas, weights, optimiser states and selected op to 1e-9 in float64 over a few steps."""

import itertools
import math
import random

import pytest
import torch

from nasp.search import FusedStepUnsupported, SearchConfig, Searcher
from nasp.streams import TensorLoader
from sif.fused import SUPPORTED, FusedSIFStep
from sif.space import SIFSpace
from sif.task import RatingTask

NU, NI = 20, 25


def _loaders(n_train=320, n_valid=192, batch=32, contexts=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    n = n_train + n_valid
    cols = [torch.randint(NU, (n,), generator=g), torch.randint(NI, (n,), generator=g),
            torch.randn(n, generator=g, dtype=torch.float64).to(dtype)]     # ratings in the model's dtype
    if contexts:
        cols.append(torch.randint(3, (n,), generator=g))
    return (TensorLoader(*(c[:n_train] for c in cols), batch_size=batch, seed=0),
            TensorLoader(*(c[n_train:] for c in cols), batch_size=batch, seed=1))


def _searcher(fused, space_kw=(), task_kw=(), dtype=torch.float64, task_cls=RatingTask, **cfg):
    space = SIFSpace(NU, NI, **{"embedding_dim": 3, "seed": 0, **dict(space_kw)}).to(dtype)
    config = SearchConfig(**{"epochs": 1, "seed": 0, "w_optimizer": "adagrad", "w_lr": 0.05, "a_lr": 3e-2,
                             "w_lr_schedule": "constant", "w_momentum": 0.0, "w_weight_decay": 0.0,
                             "log_every": 10_000, "fused": fused, **cfg})
    return Searcher(space, task_cls(**{"reg": 1e-2, **dict(task_kw)}), config, show_progress=False)


def _close(a, b, tol, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], tol, f"{path}.{k}")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{path}: {m}")
    else:
        assert a == b or math.isclose(a, b, rel_tol=tol, abs_tol=tol), (path, a, b)


def _equal_runs(space_kw, task_kw, cfg, dtype=torch.float64, tol=1e-9):
    runs = []
    for fused in (False, True):
        s = _searcher(fused, space_kw, task_kw, dtype, **cfg)
        result = s.fit(*_loaders(dtype=dtype))
        assert isinstance(s.fused_step, FusedSIFStep) == fused
        runs.append((s, result))
    (g, rg), (f, rf) = runs
    _close(g.model.state_dict(), f.model.state_dict(), tol, "model")
    for key in ("w_opt", "a_opt"):
        _close(getattr(g, key).state_dict()["state"], getattr(f, key).state_dict()["state"], tol, key)
    for hg, hf in zip(rg.history, rf.history, strict=True):
        for key in ("train_loss", "alpha_loss", "valid_rmse"):
            _close(hg[key], hf[key], tol, key)
        assert hg["genotype"] == hf["genotype"]
    assert g.model.genotype().choices("interaction")[0].op == f.model.genotype().choices("interaction")[0].op


COVERED = {
    "w_optimizer": [("sgd", {"w_momentum": 0.9}), ("adagrad", {}), ("adam", {"w_lr": 0.01})],
    "use_bias": [False, True], "g_skip": [False, True], "train_all_heads": [False, True],
    "head_init": ["uniform", "ones"],
    "penalty": [("l2", False), ("l2", True), ("norm", False), ("norm", True), ("effective", False)],
    "extra": [{}, {"grad_clip": 0.05}, {"eta": 0.3}, {"alpha_every": 2}, {"reg": 0.0}],
}
_ALL = list(itertools.product(*COVERED.values()))
COMBOS = random.Random(0).sample(_ALL, 14)


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(str(x)[:12] for x in c))
def test_covered_combination_equals_the_generic_step(combo):
    (opt, opt_kw), bias, skip, all_heads, head_init, (penalty, on_z), extra = combo
    reg = extra.get("reg", 1e-2)
    cfg = {"w_optimizer": opt, **opt_kw, **{k: v for k, v in extra.items() if k != "reg"}}
    space_kw = {"use_bias": bias, "g_skip": skip, "head_init": head_init}
    task_kw = {"train_all_heads": all_heads, "penalty": penalty, "on_transformed": on_z, "reg": reg}
    _equal_runs(space_kw, task_kw, cfg)


def test_float32_is_covered_and_close():
    _equal_runs({"use_bias": True}, {"train_all_heads": True}, {}, dtype=torch.float32, tol=1e-4)


class _ScaledTask(RatingTask):
    def loss(self, model, batch, view, stream):
        return 2 * super().loss(model, batch, view, stream)


def _rmsprop(params):
    return torch.optim.RMSprop(params, lr=0.01)


REFUSED = [
    pytest.param({}, {}, {"strategy": "darts1", "alpha_init": "darts"}, {}, "strategy", id="darts1"),
    pytest.param({}, {}, {"amp": "bf16"}, {}, "amp", id="amp"),
    pytest.param({"neighbourhood": "both"}, {}, {}, {}, "neighbourhoods", id="neighbourhood"),
    pytest.param({"num_contexts": 3}, {}, {}, {}, "tensor", id="tensor"),
    pytest.param({}, {}, {}, {"dtype": torch.bfloat16}, "dtype", id="bf16-params"),
    pytest.param({}, {}, {}, {"task_cls": _ScaledTask}, "_ScaledTask", id="other-task"),
    pytest.param({}, {}, {"compile": True, "compile_backend": "eager"}, {}, "compile", id="compile"),
]


@pytest.mark.parametrize(("space_kw", "task_kw", "cfg", "kw", "named"), REFUSED)
def test_uncovered_setting_is_refused_and_falls_back(space_kw, task_kw, cfg, kw, named):
    s = _searcher(None, space_kw, task_kw, **kw, **cfg)
    with pytest.raises(FusedStepUnsupported, match=named):
        FusedSIFStep(s)
    assert s._resolve_fused_step() is None                   # the searcher runs the generic step


def test_other_weight_optimisers_and_data_parallel_are_refused_and_the_generic_step_runs():
    s = _searcher(None)
    s.w_opt = _rmsprop(s.weight_params)
    with pytest.raises(FusedStepUnsupported, match="RMSprop"):
        FusedSIFStep(s)
    result = s.fit(*_loaders())
    assert s.fused_step is None and math.isfinite(result.history[-1]["train_loss"])
    s = _searcher(None)
    s.grad_sync = lambda grads: None
    with pytest.raises(FusedStepUnsupported, match="data-parallel"):
        FusedSIFStep(s)


def test_allow_list_names_every_setting_it_checks():
    from sif.fused import _settings

    assert set(_settings(_searcher(None))) == set(SUPPORTED)


@pytest.mark.parametrize("radius", [1.0, 2.0])
def test_head_projection_without_torch_foreach_ops_is_the_same(monkeypatch, radius):
    """The heads' projection (both steps use it) has a public-API fallback for a torch without _foreach ops."""
    import sif.space

    spaces = [SIFSpace(NU, NI, embedding_dim=3, head_init="ones", head_radius=radius).double() for _ in range(2)]
    spaces[0].after_weight_step()
    monkeypatch.setattr(sif.space, "_HAS_FOREACH", False)
    spaces[1].after_weight_step()
    for a, b in zip(spaces[0].heads, spaces[1].heads, strict=True):
        assert torch.equal(a.weight, b.weight) and float(a.weight.detach().norm()) <= radius + 1e-12
