import json
import math

import pytest
import torch

from nasp.arch import DENSE, ArchView
from nasp.checkpoint import load_checkpoint
from nasp.genotype import Genotype, derive, draw, genotype_from_onehot
from nasp.regularizers import complexity, normalise_costs
from nasp.search import NonFiniteLossError, SearchConfig, Searcher
from nasp.space import create_space
from nasp.spaces.toy import ToySpace, ToyTask, make_toy_data, random_planted
from nasp.strategies import nasp_alpha_grads, unrolled_alpha_grads
from nasp.streams import TensorLoader

FAST = dict(w_lr=0.05, w_weight_decay=0.0, a_lr=3e-3)


def _data(seed, planted=None, n=4096, nv=512):
    planted = planted or random_planted(3, 2, seed)
    x, y = make_toy_data(n, planted, seed=seed, teacher_seed=seed)
    xv, yv = make_toy_data(nv, planted, seed=seed + 1000, teacher_seed=seed)
    return planted, TensorLoader(x, y, batch_size=128, seed=seed), TensorLoader(xv, yv, batch_size=128, seed=seed)


def _searcher(seed, device, strategy="nasp", run_dir=None, **cfg):
    space = ToySpace(seed=seed, alpha_init="darts" if strategy.startswith("darts") else "nasp")
    config = SearchConfig(strategy=strategy, seed=seed, **{"epochs": 4, **FAST, **cfg})
    return Searcher(space, ToyTask(), config, device=device, run_dir=run_dir, show_progress=False)


def _found(genotype):
    return {(c.target, c.source, c.op) for c in genotype.choices("edges")}


def test_nasp_recovers_planted_ops(device):
    """The architecture chosen on validation is the planted one for every seed; the last prox (which can
    flip late, when converged alphas random-walk under Adam) for at least 4 of 5 seeds."""
    final_ok = 0
    for seed in range(5):
        planted, train, valid = _data(seed)
        result = _searcher(seed, device, epochs=8).fit(train, valid)
        want = {(f"n{j}", f"x{i}", op) for j, (i, op) in planted.items()}
        assert _found(result.best_genotype) == want, seed
        assert result.history[result.best_epoch]["valid_loss"] < 0.02      # noise floor is 0.01
        final_ok += _found(result.genotype) == want
    assert final_ok >= 4


def test_sparse_forward_equals_dense_forward_with_one_hot_weights(device):
    space = ToySpace(seed=3).to(device)
    x = torch.randn(16, 3, 8, device=device)
    for _ in range(5):
        with torch.no_grad():
            space.arch.alphas["edges"].uniform_(0, 1)
        sparse = space.arch.sparse_view()
        dense = ArchView(DENSE, sparse.weights)
        torch.testing.assert_close(space(x, sparse), space(x, dense), rtol=0, atol=1e-6)


def test_nasp_alpha_gradient_equals_autograd_on_one_hot_matrix(device):
    planted, train, valid = _data(4)
    s = _searcher(4, device)
    batch = [t.to(device) for t in next(iter(valid))]
    # the NASP alpha step: non-selected ops run without graphs
    loss, grads, _ = nasp_alpha_grads(s, batch)
    # plain autograd of the same loss w.r.t. the one-hot matrix, every op with a full graph
    onehot = s.model.arch.prox_c1()["edges"].clone().requires_grad_(True)
    ref_loss = ToyTask().loss(s.model, batch, ArchView(DENSE, {"edges": onehot}), "valid")
    (ref,) = torch.autograd.grad(ref_loss, onehot)
    torch.testing.assert_close(loss, ref_loss.detach())
    torch.testing.assert_close(grads[0], ref, rtol=1e-5, atol=1e-6)
    assert (ref != 0).sum() > ref.shape[0], "gradient must reach non-selected ops too"


def test_nasp_alpha_step_builds_no_graph_for_non_selected_ops(device, monkeypatch):
    s = _searcher(0, device)
    _, _, valid = _data(0)
    calls = []
    import nasp.spaces.toy as toy

    orig = toy.ScaledOp.forward

    def spy(self, h):
        calls.append((id(self), torch.is_grad_enabled()))
        return orig(self, h)

    monkeypatch.setattr(toy.ScaledOp, "forward", spy)
    view = s.model.arch.sparse_view()
    selected = {id(s.model.cells[r][k]) for r, k in enumerate(view.selected["edges"]) if k >= 0}
    nasp_alpha_grads(s, [t.to(device) for t in next(iter(valid))])
    assert len(calls) == 3 * 2 * 4            # every op of every row is evaluated once
    for op_id, grad_enabled in calls:
        assert grad_enabled == (op_id in selected)


def test_weight_step_touches_only_selected_ops(device):
    planted, train, valid = _data(1)
    s = _searcher(1, device, w_weight_decay=3e-4, epochs=1, max_steps_per_epoch=1, alpha_every=1000)
    before = {n: p.detach().clone() for n, p in s.model.named_weights()}
    s.fit(train, valid)          # one weight step (alpha_every=1000: the alpha step only at step 0)
    sel = s.model.arch.sparse_view().selected["edges"]
    for r, row in enumerate(s.model.cells):
        for k, op in enumerate(row):
            changed = any(not torch.equal(before[f"cells.{r}.{k}.{n}"], p) for n, p in op.named_parameters())
            assert changed == (k == sel[r]), (r, k)


def _unrolled_objective(s, alpha, train_batch, valid_batch, xi):
    """L_val(w - xi * grad_w L_train(w, softmax(A)), softmax(A)), computed directly (float64)."""
    view = ArchView(DENSE, {"edges": torch.softmax(alpha, dim=-1)})
    W = s.weight_params
    g = torch.autograd.grad(ToyTask().loss(s.model, train_batch, view, "train"), W, allow_unused=True)
    w0 = [p.detach().clone() for p in W]
    with torch.no_grad():
        for p, gi in zip(W, g, strict=True):
            if gi is not None:
                p.sub_(xi * gi)
    out = ToyTask().loss(s.model, valid_batch, view, "valid").detach()
    with torch.no_grad():
        for p, w in zip(W, w0, strict=True):
            p.copy_(w)
    return out


def test_darts_second_order_gradient_matches_finite_differences():
    torch.manual_seed(0)
    _, train, valid = _data(2, n=64, nv=64)
    s = _searcher(2, "cpu", strategy="darts2", w_momentum=0.0, w_weight_decay=0.0, w_lr=0.1)
    s.model.double()
    with torch.no_grad():
        s.model.arch.alphas["edges"].normal_(0, 0.5)
        for p in s.weight_params:
            p.add_(0.3 * torch.randn_like(p))
    tb = [t.double() for t in next(iter(train))]
    vb = [t.double() for t in next(iter(valid))]
    _, grads, _ = unrolled_alpha_grads(s, tb, vb)
    alpha = s.model.arch.alphas["edges"].detach().clone()
    num = torch.zeros_like(alpha)
    h = 1e-5
    for idx in range(alpha.numel()):
        e = torch.zeros_like(alpha).view(-1)
        e[idx] = h
        e = e.view_as(alpha)
        num.view(-1)[idx] = (_unrolled_objective(s, alpha + e, tb, vb, 0.1)
                             - _unrolled_objective(s, alpha - e, tb, vb, 0.1)) / (2 * h)
    torch.testing.assert_close(grads[0], num, rtol=2e-3, atol=1e-5)


def _assert_same_state(a: Searcher, b: Searcher):
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    assert a.model.genotype() == b.model.genotype()


def test_resume_after_epoch_checkpoint_is_bit_identical(tmp_path):
    _, train, valid = _data(6)
    ref = _searcher(6, "cpu", epochs=4)
    ref_result = ref.fit(train, valid)

    class Kill(Exception):
        pass

    def kill_after_epoch_1(epoch, elapsed, metrics):
        if epoch == 1:
            raise Kill

    first = _searcher(6, "cpu", epochs=4, run_dir=tmp_path)
    first.callbacks.append(kill_after_epoch_1)
    with pytest.raises(Kill):
        first.fit(train, valid)
    torch.manual_seed(1234)    # global RNG disturbed between the runs: the checkpoint must restore it
    resumed = _searcher(6, "cpu", epochs=4, run_dir=tmp_path)
    result = resumed.fit(train, valid)
    _assert_same_state(ref, resumed)
    assert result.genotype == ref_result.genotype
    assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in ref_result.history]
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2, 3]


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    _, train, valid = _data(7)
    ref = _searcher(7, "cpu", epochs=3, checkpoint_every=5)
    ref.fit(train, valid)

    class Kill(Exception):
        pass

    killer = _searcher(7, "cpu", epochs=3, checkpoint_every=5, run_dir=tmp_path)
    orig = killer._step_fn

    def dies_at_step_23(s, *a):
        if s.step == 23:       # after the checkpoint of step 20, in the middle of epoch 1
            raise Kill
        return orig(s, *a)

    killer._step_fn = dies_at_step_23
    with pytest.raises(Kill):
        killer.fit(train, valid)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 20
    resumed = _searcher(7, "cpu", epochs=3, checkpoint_every=5, run_dir=tmp_path)
    resumed.fit(train, valid)
    _assert_same_state(ref, resumed)


def test_resume_refuses_other_settings(tmp_path):
    _, train, valid = _data(0)
    _searcher(0, "cpu", epochs=1, run_dir=tmp_path).fit(train, valid)
    with pytest.raises(ValueError, match="other settings"):
        _searcher(0, "cpu", epochs=1, run_dir=tmp_path, a_lr=0.1).fit(train, valid)


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path):
    planted, train, valid = _data(0)
    s = _searcher(0, "cpu", epochs=3, run_dir=tmp_path)
    good = {}

    def poison(epoch, elapsed, metrics):
        if epoch == 0:
            good.update({k: v.clone() for k, v in s.model.state_dict().items()})
            with torch.no_grad():
                s.train_x = None
                for p in s.weight_params:
                    p.fill_(float("nan"))

    s.callbacks.append(poison)
    with pytest.raises(NonFiniteLossError, match=r"search diverged at epoch 1 .*NaN or infinite.*last good checkpoint"):
        s.fit(train, valid)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    for k, v in good.items():        # the in-memory model was put back to the last good state
        assert torch.equal(s.model.state_dict()[k], v), k


def test_random_and_darts_strategies_run_and_end_in_c1(device):
    _, train, valid = _data(3)
    for strategy in ("random", "darts1", "darts2"):
        result = _searcher(3, device, strategy=strategy, epochs=2, max_steps_per_epoch=4,
                           random_candidates=4).fit(train, valid)
        assert len(result.genotype.choices("edges")) == 2, strategy
        assert len(result.history) == 2


def test_derivation_equals_last_prox_and_run_files(tmp_path, device):
    _, train, valid = _data(0)
    s = _searcher(0, device, epochs=2, run_dir=tmp_path)
    result = s.fit(train, valid)
    assert result.genotype == derive(s.model.arch)
    assert result.genotype == genotype_from_onehot(s.model.arch.specs, s.model.arch.prox_c1())
    assert result.history[-1]["genotype"] == result.genotype.to_dict()
    for name in ("config.json", "log.jsonl", "checkpoint.pt", "genotype.json", "genotype.png", "genotype.dot"):
        assert (tmp_path / name).is_file(), name
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    for key in ("train_loss", "alpha_loss", "valid_loss", "alphas", "genotype", "seconds_alpha", "seconds_weight"):
        assert key in rec
    assert Genotype.from_json(tmp_path / "genotype.json") == result.genotype
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["search"]["strategy"] == "nasp"


def test_callbacks_receive_metrics_and_can_stop(device):
    _, train, valid = _data(0)
    seen = []

    def cb(epoch, elapsed, metrics):
        seen.append((epoch, elapsed, metrics["valid_loss"]))
        return epoch == 1

    s = _searcher(0, device, epochs=5)
    s.callbacks.append(cb)
    result = s.fit(train, valid)
    assert [e for e, _, _ in seen] == [0, 1] and len(result.history) == 2
    assert all(t >= 0 and math.isfinite(v) for _, t, v in seen)


def test_genotype_json_round_trip_and_errors(tmp_path):
    g = ToySpace(seed=0).genotype()
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Genotype.from_json(bad)
    out = draw(g, tmp_path / "pic.png")
    assert out.is_file() and (tmp_path / "pic.dot").read_text().startswith("digraph")


def test_complexity_regulariser_by_hand():
    w = {"a": torch.tensor([[1.0, 0.0], [0.5, 0.5]])}
    cost = {"a": torch.tensor([[10.0, 30.0], [0.0, 0.0]])}
    assert torch.equal(normalise_costs(cost["a"]), torch.tensor([[0.25, 0.75], [0.0, 0.0]]))
    assert complexity(w, cost, 2.0).item() == pytest.approx(2.0 * 0.25)
    assert complexity(w, cost, 0.0) is None
    costs = ToySpace().op_costs()["edges"]
    assert costs.shape == (6, 4) and (costs == 16).all()       # scale + bias of dim 8 per op


def test_space_registry_and_config_validation():
    assert isinstance(create_space("toy", num_inputs=2, num_nodes=1), ToySpace)
    with pytest.raises(KeyError, match="unknown search space"):
        create_space("nope")
    with pytest.raises(ValueError, match="strategy"):
        SearchConfig(strategy="evolution")
    with pytest.raises(ValueError, match="SearchConfig: unknown config key .epochz."):
        SearchConfig.from_dict({"epochz": 3})


def test_to_device_returns_batches_already_on_the_device_untouched():
    """A batch already on the device is returned as is (no op per tensor and step); others are moved, nested
    structure kept."""
    from nasp.search import to_device

    cpu = torch.device("cpu")
    batch = (torch.arange(3), torch.ones(3))
    assert to_device(batch, cpu) is batch
    t = torch.zeros(2)
    assert to_device(t, cpu) is t
    moved = to_device({"a": [torch.ones(1, dtype=torch.float64), 3], "b": t}, torch.device("meta"))
    assert moved["a"][0].device.type == "meta" and moved["a"][1] == 3 and moved["b"].device.type == "meta"


def test_projection_cache_follows_a_fused_optimiser_step_of_the_alphas(device):
    """torch's fused Adam does not bump version counters; the search's alpha update does, so the cached
    projection (sparse_view, the epoch-end evaluation) never serves the argmax of older alphas (DARTS steps the
    alphas without a prox_C2 that would bump it)."""
    _, train, valid = _data(3)
    s = _searcher(3, device, strategy="darts1", epochs=1, max_steps_per_epoch=1, a_lr=10.0)
    assert s.a_opt.defaults.get("fused") or device != "cpu"
    arch = s.model.arch
    with torch.no_grad():
        for a in arch.alphas.values():
            a.copy_(torch.randn(a.shape, generator=torch.Generator().manual_seed(1)))
    before = {n: w.clone() for n, w in arch.projection()[0].items()}      # fills the cache
    from nasp.strategies import _alpha_update

    grads = [torch.randn(a.shape, generator=torch.Generator().manual_seed(2)).to(a) * 100 for a in s.alpha_params]
    _alpha_update(s, grads, [torch.zeros_like(p) for p in s.extra_params])
    fresh = arch.prox_c1()
    assert any(not torch.equal(before[n], fresh[n]) for n in fresh)          # the argmax moved
    cached = arch.projection()[0]
    assert all(torch.equal(cached[n], fresh[n]) for n in fresh)
