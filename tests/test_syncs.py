"""Host syncs of one search step: counted, kept to the minimum, and without changing any result.

A device->host transfer is any ``tolist``/``item``/``bool``/``int``/``float``/``numpy``/``cpu`` of a tensor. On
the CPU they cost nothing, but they are exactly the calls that block the host on CUDA, so the counts measured here
are the syncs a GPU step pays. Two kinds of host reads are not syncs on any device and are left out: the step
counters of ``torch.optim`` (CPU tensors by design) and random search's architecture draw (made on the CPU).
"""

import contextlib
import os
import traceback

import pytest
import torch

from nasp.arch import ArchView
from nasp.loop import HostProbe
from nasp.search import SearchConfig, Searcher
from nasp.spaces.toy import ToySpace, ToyTask, make_toy_data, random_planted
from nasp.strategies import STRATEGIES
from nasp.streams import TensorLoader

READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")


@contextlib.contextmanager
def host_reads(monkeypatch, searcher: Searcher):
    """Collects (method, caller) of every host read of a tensor, except optimiser step counters and reads made
    inside ``random_view`` (its draw lives on the CPU)."""
    calls: list[tuple[str, str]] = []
    m = pytest.MonkeyPatch()

    def step_counters():
        return {id(st["step"]) for opt in (searcher.w_opt, searcher.a_opt) for st in opt.state.values()
                if "step" in st}

    def wrap(name, orig):
        def read(self, *args, **kwargs):
            stack = traceback.extract_stack(limit=12)[:-1]
            if id(self) not in step_counters() and not any(f.name == "random_view" for f in stack):
                calls.append((name, f"{stack[-1].filename}:{stack[-1].lineno}"))
            return orig(self, *args, **kwargs)
        return read

    for name in READS:
        m.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    try:
        yield calls
    finally:
        m.undo()


def _loaders(seed=0, n=512, nv=256, batch=64):
    planted = random_planted(3, 2, seed)
    x, y = make_toy_data(n, planted, seed=seed, teacher_seed=seed)
    xv, yv = make_toy_data(nv, planted, seed=seed + 1000, teacher_seed=seed)
    return TensorLoader(x, y, batch_size=batch, seed=seed), TensorLoader(xv, yv, batch_size=batch, seed=seed + 1)


def _searcher(strategy="nasp", **cfg):
    space = ToySpace(seed=0, alpha_init="darts" if strategy.startswith("darts") else "nasp")
    config = SearchConfig(strategy=strategy, seed=0, **{"epochs": 1, "w_lr": 0.05, "w_weight_decay": 0.0,
                                                         "a_lr": 3e-3, "log_every": 10_000, **cfg})
    return Searcher(space, ToyTask(), config, show_progress=False)


def _reads_per_step(monkeypatch, searcher: Searcher) -> tuple[list[int], list]:
    """(host reads inside each step, host reads of the loop between two steps of an epoch)."""
    per_step, between = [], []
    with host_reads(monkeypatch, searcher) as calls:
        def counted(step_fn):
            def step(*args):
                if per_step and searcher._epoch_acc.get("steps", 0) > 0:     # not the first step of an epoch
                    between.extend(calls)
                calls.clear()
                out = step_fn(*args)
                per_step.append(len(calls))
                calls.clear()
                return out
            return step

        searcher._step_fn = counted(searcher._step_fn)
        monkeypatch.setitem(STRATEGIES, "random", counted(STRATEGIES["random"]))      # warm-up steps
        searcher.fit(*_loaders())
    return per_step, between


def test_nasp_step_reads_the_selection_once_per_alpha_update(monkeypatch):
    # the very first alpha step also projects the initial A; afterwards the selection of the updated A serves
    # the weight step and the next alpha step
    per_step, loop = _reads_per_step(monkeypatch, _searcher("nasp"))
    assert per_step == [2] + [1] * 7
    assert loop == []
    per_step, loop = _reads_per_step(monkeypatch, _searcher("nasp", alpha_every=3))
    assert per_step == [2, 0, 0, 1, 0, 0, 1, 0]          # no alpha update: no sync at all
    assert loop == []


@pytest.mark.parametrize("strategy", ["darts1", "darts2", "random"])
def test_darts_and_random_steps_never_sync(monkeypatch, strategy):
    per_step, loop = _reads_per_step(monkeypatch, _searcher(strategy))
    assert per_step == [0] * 8
    assert loop == []


def test_warmup_steps_never_sync(monkeypatch):
    per_step, loop = _reads_per_step(monkeypatch, _searcher("nasp", epochs=2, warmup_epochs=1))
    assert per_step[:8] == [0] * 8                         # warm-up epoch: random C1 samples
    assert per_step[8:] == [1] * 8        # the epoch-end evaluation already read the selection of A
    assert loop == []


def test_sif_nasp_step_reads_once_per_alpha_update(monkeypatch):
    from sif.space import SIFSpace
    from sif.task import RatingTask

    g = torch.Generator().manual_seed(0)
    u, i, y = torch.randint(30, (768,), generator=g), torch.randint(40, (768,), generator=g), torch.randn(768)
    train = TensorLoader(u[:512], i[:512], y[:512], batch_size=128, seed=0)
    valid = TensorLoader(u[512:], i[512:], y[512:], batch_size=128, seed=1)
    space = SIFSpace(30, 40, embedding_dim=4, use_bias=True, g_skip=True, seed=0)
    s = Searcher(space, RatingTask(train_all_heads=True), SearchConfig(epochs=1, w_optimizer="adam",
                 alpha_every=2, log_every=10_000, fused=False), show_progress=False)     # the generic step
    per_step, outside = [], []
    step_fn = s._step_fn
    with host_reads(monkeypatch, s) as calls:
        def step(*args):
            outside.extend(calls)
            calls.clear()
            out = step_fn(*args)
            per_step.append(len(calls))
            calls.clear()
            return out

        s._step_fn = step
        s.fit(train, valid)
    assert per_step == [2, 0, 1, 0]


def test_cached_projection_gives_bit_identical_searches(monkeypatch):
    """The cache changes no result: runs with it equal runs that recompute Ā and its selection every time."""
    def run(strategy, **cfg):
        s = _searcher(strategy, epochs=2, **cfg)
        s.fit(*_loaders())
        return s.model.state_dict(), [h["train_loss"] for h in s.history]

    cases = [("nasp", {}), ("nasp", {"alpha_every": 3}), ("nasp", {"warmup_epochs": 1, "eta": 0.1}),
             ("random", {})]
    cached = [run(st, **cfg) for st, cfg in cases]
    monkeypatch.setattr("nasp.arch.ArchParameters._cache_valid", lambda self: False)
    fresh = [run(st, **cfg) for st, cfg in cases]
    for (sd_a, loss_a), (sd_b, loss_b) in zip(cached, fresh, strict=True):
        assert loss_a == loss_b
        for k in sd_a:
            assert torch.equal(sd_a[k], sd_b[k]), k


def test_projection_cache_follows_every_kind_of_alpha_write():
    space = ToySpace(seed=1)
    arch = space.arch
    a = arch.alphas["edges"]

    def fresh_selection():
        return {n: tuple(int(v) for v in torch.where(w.amax(1) > 0, w.argmax(1), -1))
                for n, w in arch.prox_c1().items()}

    def check():
        onehot, sel = arch.projection()
        assert sel == fresh_selection()
        for n, w in arch.prox_c1().items():
            assert torch.equal(onehot[n], w)

    check()
    assert arch.cached_selection() is not None
    opt = torch.optim.Adam([a], lr=0.5)
    a.grad = torch.randn_like(a)
    opt.step()                                                    # optimiser, in place
    assert arch.cached_selection() is None
    check()
    with torch.no_grad():
        a.mul_(-1.0)                                              # any in-place op
    check()
    arch.set_({"edges": torch.rand_like(a)})
    check()
    arch.load_state_dict({**arch.state_dict(), "alphas.edges": torch.rand_like(a)})
    check()
    a.data.copy_(torch.rand_like(a))                              # behind autograd's back: needs invalidate()
    arch.invalidate()
    check()
    space.to(torch.float64)                                       # new storage
    check()
    onehot, _ = arch.projection()
    onehot["edges"].zero_()                                       # a consumer wrote into the shared Ā
    check()


def test_views_of_the_cache_share_one_read():
    arch = ToySpace(seed=2).arch
    v1 = arch.sparse_view()
    v2 = arch.nasp_view()
    assert v1.selected == v2.selected
    assert v2.weights["edges"].requires_grad and not v1.weights["edges"].requires_grad
    assert isinstance(v1, ArchView)


def test_host_probe_reads_posted_values_with_their_tag():
    probe = HostProbe(torch.device("cpu"))
    assert probe.read() is None
    probe.post(torch.tensor([1.5, float("nan")]), tag=7)
    values, tag = probe.read()
    assert values[0] == 1.5 and values[1] != values[1] and tag == 7


def test_progress_bar_postfix_shows_loss_and_architecture(monkeypatch):
    s = _searcher("nasp", log_every=2, max_steps_per_epoch=4)
    shown = []

    class Bar:
        def update(self, n):
            pass

        def set_postfix_str(self, text):
            shown.append(text)

        def close(self):
            pass

    monkeypatch.setattr("nasp.search.progress", lambda *a: Bar())
    s.show_progress = True
    s.fit(*_loaders())
    assert len(shown) == 2
    assert shown[-1].startswith("loss=") and "edges: x" in shown[-1] and "->n0=" in shown[-1]


def test_compile_option_with_the_eager_backend_gives_the_same_search():
    """``compile=True`` routes every step's loss through torch.compile; the "eager" backend only traces (fast in
    CI) and must not change the result."""
    torch._dynamo.reset()
    ref = _searcher("nasp", max_steps_per_epoch=2, alpha_every=2)
    ref.fit(*_loaders())
    comp = _searcher("nasp", max_steps_per_epoch=2, alpha_every=2, compile=True, compile_backend="eager")
    assert comp.task_loss is not comp.task.loss
    comp.fit(*_loaders())
    for (k, v), (_, w) in zip(ref.model.state_dict().items(), comp.model.state_dict().items(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)
    torch._dynamo.reset()


def test_compile_config_validation():
    with pytest.raises(ValueError, match="compile must be"):
        SearchConfig(compile="yes")
    with pytest.raises(ValueError, match="compile_backend"):
        SearchConfig(compile_backend="")


@pytest.mark.skipif(os.environ.get("NASP_SLOW_TESTS") != "1", reason="real torch.compile (inductor) is slow on a "
                    "CPU; set NASP_SLOW_TESTS=1")
def test_compile_with_inductor_runs_a_search():
    torch._dynamo.reset()
    ref = _searcher("darts1", max_steps_per_epoch=3)
    ref.fit(*_loaders())
    comp = _searcher("darts1", max_steps_per_epoch=3, compile=True)
    comp.fit(*_loaders())
    for (k, v), (_, w) in zip(ref.model.state_dict().items(), comp.model.state_dict().items(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-4, atol=1e-5, msg=k)
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_nasp_epoch_has_no_sync_outside_the_alpha_selection():
    """On CUDA, torch's sync debug mode turns every host sync into an error: a NASP epoch with alpha_every=2
    runs its steps with only the one selection read per alpha update (allowed below) and none elsewhere."""
    s = Searcher(ToySpace(seed=0), ToyTask(), SearchConfig(epochs=1, alpha_every=2, log_every=3,
                 max_steps_per_epoch=6), device="cuda", show_progress=False)
    train, valid = _loaders()
    step_fn, reads = s._step_fn, []
    selections = __import__("nasp.arch", fromlist=["selections"]).selections

    def allowed_selections(onehot):
        torch.cuda.set_sync_debug_mode(0)
        try:
            reads.append(1)
            return selections(onehot)
        finally:
            torch.cuda.set_sync_debug_mode(2)

    def step(*args):
        torch.cuda.set_sync_debug_mode(2)
        try:
            return step_fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    with pytest.MonkeyPatch.context() as m:
        m.setattr("nasp.arch.selections", allowed_selections)
        s._step_fn = step
        s.fit(train, valid)
    assert len(reads) == 1 + 3                                   # the initial A, then one per alpha update


def test_sif_stand_alone_training_compile_option_with_the_eager_backend():
    from sif.space import SIFSpace
    from sif.task import RatingTask
    from sif.train import TrainConfig, train_model

    g = torch.Generator().manual_seed(1)
    u, i, y = torch.randint(30, (512,), generator=g), torch.randint(40, (512,), generator=g), torch.randn(512)
    train, valid = TensorLoader(u, i, y, batch_size=128, seed=0), TensorLoader(u, i, y, batch_size=512, seed=1)
    torch._dynamo.reset()
    results = []
    for compile_ in (False, True):
        model = SIFSpace(30, 40, embedding_dim=4, ops=("multiply",), use_bias=True, g_skip=True, seed=0)
        cfg = TrainConfig(max_epochs=2, compile=compile_, compile_backend="eager")
        results.append((train_model(model, RatingTask(), train, valid, cfg, show_progress=False), model))
    torch._dynamo.reset()
    (ref, m_ref), (comp, m_comp) = results
    assert ref.history[-1]["train_loss"] == pytest.approx(comp.history[-1]["train_loss"], rel=1e-6)
    for (k, v), (_, w) in zip(m_ref.state_dict().items(), m_comp.state_dict().items(), strict=True):
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-7, msg=k)
