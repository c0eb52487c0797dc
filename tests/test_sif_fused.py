"""The fused SIF NASP step (sif/fused.py) gives the generic step's results: alphas, weights, optimiser states
and losses after 20 search steps agree to 1e-9 in float64, checkpoints resume across the two paths, and
unsupported settings fall back to the generic step with a warning."""

import logging
import math
import warnings

import pytest
import torch

from nasp.search import FusedStepUnsupported, SearchConfig, Searcher
from nasp.streams import TensorLoader
from sif.fused import FusedSIFStep
from sif.interactions import MIXTURES, PRIMITIVES
from sif.space import SIFSpace
from sif.task import RatingTask

NU, NI = 30, 40


def _loaders(seed=0, n_train=640, n_valid=384, batch=64):
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_valid
    u, i = torch.randint(NU, (n,), generator=g), torch.randint(NI, (n,), generator=g)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    train = TensorLoader(u[:n_train], i[:n_train], y[:n_train], batch_size=batch, seed=seed)
    valid = TensorLoader(u[n_train:], i[n_train:], y[n_train:], batch_size=batch, seed=seed + 1)
    return train, valid


def _searcher(fused, space_kw=None, task_kw=None, run_dir=None, **cfg):
    space = SIFSpace(NU, NI, **{"embedding_dim": 3, "seed": 0, **(space_kw or {})}).double()
    config = SearchConfig(**{"epochs": 2, "seed": 0, "w_optimizer": "adagrad", "w_lr": 0.05,
                             "w_lr_schedule": "constant", "w_momentum": 0.0, "w_weight_decay": 0.0, "a_lr": 3e-2,
                             "log_every": 10_000, "fused": fused, **cfg})
    task = RatingTask(**{"reg": 1e-2, **(task_kw or {})})
    return Searcher(space, task, config, run_dir=run_dir, show_progress=False)


def _state(s: Searcher) -> dict:
    return {"model": s.model.state_dict(), "w_opt": s.w_opt.state_dict()["state"],
            "a_opt": s.a_opt.state_dict()["state"]}


def _assert_close(a, b, path="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{path}: {m}")
    else:
        assert a == b or (isinstance(a, float) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)), (path, a, b)


def _compare(space_kw=None, task_kw=None, **cfg):
    runs = []
    for fused in (False, True):
        s = _searcher(fused, space_kw, task_kw, **cfg)
        result = s.fit(*_loaders())
        assert (s.fused_step is not None) == fused
        runs.append((s, result))
    (g, rg), (f, rf) = runs
    assert rg.history[-1]["step"] == 10 * len(rg.history)
    _assert_close(_state(g), _state(f))
    for hg, hf in zip(rg.history, rf.history, strict=True):
        for key in ("train_loss", "alpha_loss", "valid_rmse"):
            assert hg[key] == hf[key] or math.isclose(hg[key], hf[key], rel_tol=1e-9), (key, hg[key], hf[key])
        assert hg["genotype"] == hf["genotype"]


SETTINGS = [
    pytest.param({}, {}, {}, id="reference-like"),
    pytest.param({"head_init": "ones"}, {"penalty": "norm"}, {}, id="heads-start-outside-the-ball"),
    pytest.param({"use_bias": True, "g_skip": True}, {"train_all_heads": True}, {}, id="bias-skip-allheads"),
    pytest.param({"use_bias": True}, {"penalty": "norm", "train_all_heads": True},
                 {"grad_clip": 0.05, "w_lr_schedule": "cosine", "w_lr_min": 0.01},
                 id="norm-clip"),
    pytest.param({"g_skip": True}, {"penalty": "l2", "on_transformed": True}, {"eta": 0.3}, id="l2-on-z-eta"),
    pytest.param({"use_bias": True, "head_radius": math.inf}, {"penalty": "effective", "train_all_heads": True},
                 {}, id="effective-allheads"),
    pytest.param({"ops": ("max", "concat")}, {"penalty": "effective"}, {"w_optimizer": "adam", "w_lr": 0.01},
                 id="subset-effective-adam"),
    pytest.param({}, {}, {"warmup_epochs": 1, "epochs": 3}, id="after-warmup"),
    pytest.param({"ops": ("min",)}, {"penalty": "norm", "on_transformed": True}, {}, id="single-op"),
    pytest.param({"ops": ("multiply", "min", "plus"), "head_radius": 2.0}, {"train_all_heads": True, "reg": 0.0},
                 {"w_optimizer": "sgd", "w_momentum": 0.9, "w_lr": 0.05, "alpha_every": 3}, id="sgd-alpha-every"),
]


@pytest.mark.parametrize(("space_kw", "task_kw", "cfg"), SETTINGS)
def test_fused_step_equals_generic_step(space_kw, task_kw, cfg):
    _compare(space_kw, task_kw, **cfg)


@pytest.mark.parametrize("use_bias", [False, True])
def test_short_last_batches_reuse_the_work_buffers(use_bias):
    """Batches of several sizes (each epoch's last one is short) take views of the same grow-only work buffers
    (sized by the largest batch), and the results stay the generic step's."""
    runs = []
    for fused in (False, True):
        s = _searcher(fused, {"use_bias": use_bias}, {"train_all_heads": True})
        s.fit(*_loaders(n_train=650, n_valid=390))
        runs.append(s)
    step = runs[1].fused_step
    assert step.scratch.store["dz"].numel() == 2 * 64 * 3                      # (2, B, k) of the largest batch
    _assert_close(_state(runs[0]), _state(runs[1]))


@pytest.mark.parametrize("penalty", ["norm", "effective"])
@pytest.mark.parametrize("op", PRIMITIVES + MIXTURES)
def test_every_op_selected_in_both_paths(op, penalty):
    """Each op is the selected one (A starts with it ahead), so its hand-written backward (and its effective
    penalty) is exercised."""
    def prefer(s):
        with torch.no_grad():
            s.model.arch.alphas["interaction"][0, s.model.names.index(op)] = 0.9
        return s

    runs = []
    for fused in (False, True):
        s = prefer(_searcher(fused, {"use_bias": True, "ops": PRIMITIVES + MIXTURES},
                             {"train_all_heads": True, "penalty": penalty}, a_lr=1e-4))
        s.fit(*_loaders())
        runs.append(s)
    assert runs[0].model.genotype().choices("interaction")[0].op == op
    _assert_close(_state(runs[0]), _state(runs[1]))


def test_max_min_ties_split_the_gradient_like_torch():
    from sif.interactions import INTERACTIONS  # the op records the fused step differentiates with

    z = torch.tensor([[[1.0, 2.0, 3.0]], [[1.0, 0.0, 5.0]]], dtype=torch.float64, requires_grad=True)  # (2,1,3)
    do = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    for name in ("max", "min"):
        (grad,) = torch.autograd.grad((INTERACTIONS[name](z[0], z[1]) * do).sum(), z)
        torch.testing.assert_close(torch.stack(INTERACTIONS[name].grad(*z.detach(), do)), grad)


@pytest.mark.parametrize("first_fused", [False, True])
def test_checkpoint_of_one_path_resumes_in_the_other(tmp_path, first_fused):
    whole = _searcher(False, {"use_bias": True}, {"train_all_heads": True})
    whole.fit(*_loaders())
    first = _searcher(first_fused, {"use_bias": True}, {"train_all_heads": True}, run_dir=tmp_path)
    first.callbacks = [lambda epoch, elapsed, metrics: True]          # stop after the first epoch
    first.fit(*_loaders())
    second = _searcher(not first_fused, {"use_bias": True}, {"train_all_heads": True}, run_dir=tmp_path)
    result = second.fit(*_loaders())
    assert [h["epoch"] for h in result.history] == [0, 1]
    _assert_close(_state(whole), _state(second))


def _fallback_warning(searcher) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        searcher.fit(*_loaders())
    assert searcher.fused_step is None
    msgs = [str(w.message) for w in caught if "fused=True ignored" in str(w.message)]
    assert len(msgs) == 1
    return msgs[0]


def test_unsupported_settings_fall_back_with_a_warning():
    assert "darts1" in _fallback_warning(_searcher(True, strategy="darts1", alpha_init="darts", epochs=1))
    assert "amp" in _fallback_warning(_searcher(True, amp="bf16", epochs=1))
    s = _searcher(True, epochs=1)
    s.grad_sync = lambda grads: None
    assert "data-parallel" in _fallback_warning(s)


def test_auto_uses_the_fused_step_when_supported_and_falls_back_silently(caplog):
    """fused=None (the default): the fused step where it covers the settings, else the generic step without a
    warning (an INFO log line says why)."""
    assert SearchConfig().fused is None
    s = _searcher(None, epochs=1)
    s.fit(*_loaders())
    assert s.fused_step is not None
    fallback = _searcher(None, amp="bf16", epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # any warning fails the test
        with caplog.at_level(logging.INFO, logger="nasp.search"):
            fallback.fit(*_loaders())
    assert fallback.fused_step is None
    assert any("generic NASP step" in r.getMessage() and "amp" in r.getMessage() for r in caplog.records)


def test_tensor_case_is_unsupported():
    space = SIFSpace(4, 5, num_contexts=3, embedding_dim=2, ops=("multiply_multiply",))
    s = Searcher(space, RatingTask(), SearchConfig(epochs=1, fused=True), show_progress=False)
    with pytest.raises(FusedStepUnsupported, match="tensor"):
        FusedSIFStep(s)


def test_neighbourhoods_are_unsupported():
    space = SIFSpace(4, 5, embedding_dim=2, neighbourhood="both")
    s = Searcher(space, RatingTask(), SearchConfig(epochs=1, fused=True), show_progress=False)
    with pytest.raises(FusedStepUnsupported, match="neighbourhoods"):
        FusedSIFStep(s)


def test_other_tasks_are_unsupported():
    class Custom(RatingTask):
        def loss(self, model, batch, view, stream):
            return super().loss(model, batch, view, stream) * 2

    space = SIFSpace(4, 5, embedding_dim=2)
    s = Searcher(space, Custom(), SearchConfig(epochs=1, fused=True), show_progress=False)
    with pytest.raises(FusedStepUnsupported, match="Custom"):
        FusedSIFStep(s)


def test_fused_flag_is_validated():
    with pytest.raises(ValueError, match="fused"):
        SearchConfig(fused="yes")


def test_fused_step_reads_the_selection_once_per_alpha_update(monkeypatch):
    from test_syncs import host_reads

    s = _searcher(True, {"use_bias": True}, {"train_all_heads": True}, alpha_every=2, epochs=1)
    per_step = []
    step_fn = s._step_fn
    with host_reads(monkeypatch, s) as calls:
        def step(*args):
            calls.clear()
            out = step_fn(*args)
            per_step.append(len(calls))
            return out

        s._step_fn = step
        s.fit(*_loaders())
    assert s.fused_step is not None
    assert per_step == [2, 0, 1, 0, 1, 0, 1, 0, 1, 0]


def test_recommender_and_config_expose_the_flag():
    """``search.fused`` reaches the searcher from a RunConfig override and from SIFRecommender(search=...); the
    fused search finds the same op and (float32) nearly the same model as the generic one."""
    from sif.config import apply_override, load_config
    from sif.recommender import SIFRecommender
    from sif.synthetic import planted_ratings

    cfg = load_config()
    apply_override(cfg, "search.fused=true")
    assert cfg.search.fused is True
    ds = planted_ratings("multiply", num_users=40, num_items=50, n=1200, seed=0)
    recs = []
    for fused in (False, True):
        rec = SIFRecommender(embedding_dim=2, use_bias=False, reg=1e-5, penalty="norm", random_state=0,
                             g_skip=False, search={"epochs": 2, "w_optimizer": "adagrad", "w_lr": 0.05,
                                                   "a_lr": 3e-4, "fused": fused},
                             train={"batch_size": 128, "max_epochs": 1})
        recs.append(rec.fit(ds, show_progress=False))
    assert recs[0].op_ == recs[1].op_
    h0, h1 = recs[0].search_result_.history, recs[1].search_result_.history
    for a, b in zip(h0, h1, strict=True):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4)
        assert math.isclose(a["valid_rmse"], b["valid_rmse"], rel_tol=1e-4)


def test_host_selection_matches_row_argmax_with_ties_and_nan():
    """The fused step compares the K alphas on the host; it picks what nasp.prox.row_argmax picks: the largest,
    ties broken by the op priorities, 0 for a NaN row."""
    from nasp.prox import row_argmax

    s = _searcher(True, {"ops": PRIMITIVES})
    step = FusedSIFStep(s)
    arch = s.model.arch
    rows = [[0.2, 0.9, 0.9, 0.1, 0.9], [1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.3],
            [float("nan"), 0.5, 0.2, 0.5, 0.1]]
    for prio in ([4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0], [2.0, 0.0, 4.0, 1.0, 3.0]):
        arch.op_priority_interaction.copy_(torch.tensor([prio]))
        for row in rows:
            with torch.no_grad():
                step.alpha.copy_(torch.tensor([row], dtype=step.alpha.dtype))
            expected = int(row_argmax(step.alpha.detach(), arch.op_priority_interaction)[0])
            assert step._selection() == expected, (row, prio)
