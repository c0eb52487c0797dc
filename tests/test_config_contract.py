"""Contract of the one configuration system: every recommender argument and every search and training setting is
reachable from YAML and from ``--set``, and no accepted key is silently ignored."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
import yaml

from nasp.cli import CNNSearchRun, CNNTrainRun, resolve_config
from nasp.config import ConfigError, keys, load, parse_assignments
from nasp.search import SearchConfig
from sif.baselines import BASELINES
from sif.cli import build_recommender, main
from sif.config import ModelConfig, RunConfig, load_config
from sif.estimator import _as_config
from sif.recommender import SIF_VARIANTS, constructor_params, recommender_class
from sif.train import TrainConfig

# A valid value other than the default, per setting whose type alone does not give one.
ALTERNATIVES: dict[str, typing.Any] = {
    "task": "bpr", "penalty": "norm", "head_init": "uniform", "select": "last", "search_on": "train",
    "neighbourhood": "user", "ops": ["multiply", "max"], "head_radius": 2.0, "positive_threshold": 4.0,
    "strategy": "darts1", "w_optimizer": "sgd", "w_lr_schedule": "cosine", "amp": "bf16", "alpha_init": "darts",
    "compile_backend": "eager", "compile_mode": "default", "fused": False, "max_steps_per_epoch": 7,
    "a_betas": [0.9, 0.99], "optimizer": "sgd", "device": "cuda:1", "threads": 2, "train_fraction": 0.7,
    "lr_schedule": "exponential", "network": "imagenet", "init_from": "last_good.pt", "max_seconds": 3600.0,
    "sparse_rows": True, "context": "weekday", "item_file": "u.item", "race_ensemble": False,
}


def _alternative(cls, name: str):
    """A valid non-default value for field ``name`` of dataclass ``cls``."""
    if name in ALTERNATIVES:
        return ALTERNATIVES[name]
    default = getattr(cls(), name)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 2 + 0.5
    raise AssertionError(f"{cls.__name__}.{name}: add a valid alternative value to ALTERNATIVES")


def _names() -> list[str]:
    return [*SIF_VARIANTS, "fixed:multiply", *sorted(BASELINES)]


def _model_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig) if f.name != "name"]


@pytest.mark.parametrize("name", _names())
def test_every_constructor_argument_comes_from_the_config(name):
    cfg = load_config(None, [f"model.name={name}"])
    rec = build_recommender(cfg, strict=False)
    params = constructor_params(recommender_class(name))
    assert set(rec.get_params()) == set(params)
    model_keys = set(_model_fields())
    for p in params:       # each argument is a model.* key or one of the documented top-level/section keys
        assert p in model_keys | {"device", "random_state", "train", "search", "valid_fraction", "op", "model"}, p


@pytest.mark.parametrize("name", _names())
@pytest.mark.parametrize("via", ["set", "yaml"])
def test_every_model_setting_reaches_the_recommender_or_is_refused(name, via, tmp_path):
    taken = set(constructor_params(recommender_class(name)))
    for field_name in _model_fields():
        value = _alternative(ModelConfig, field_name)
        if via == "set":
            cfg = load_config(None, [f"model.name={name}", f"model.{field_name}={json.dumps(value)}"])
        else:
            f = tmp_path / "c.yaml"
            f.write_text(yaml.safe_dump({"model": {"name": name, field_name: value}}))
            cfg = load_config(f)
        assert getattr(cfg.model, field_name) == value
        fixed = SIF_VARIANTS.get(name, {})
        if field_name in fixed and fixed[field_name] != value:      # a variant's own setting: refused, not ignored
            with pytest.raises(ConfigError, match=f"model.{field_name}: model '{name}' fixes"):
                build_recommender(cfg)
        elif field_name in taken and (field_name != "neighbourhood" or _neighbourhood_ok(name)):
            assert getattr(build_recommender(cfg), field_name) == value, (name, field_name)
        else:
            with pytest.raises(ConfigError, match=f"model.{field_name}"):
                build_recommender(cfg)


def _neighbourhood_ok(name: str) -> bool:
    base = BASELINES.get(name)
    return base is None or getattr(base, "supports_neighbourhood", False)


@pytest.mark.parametrize("field_name", [f.name for f in dataclasses.fields(SearchConfig) if f.name != "seed"])
def test_every_search_setting_reaches_the_search(field_name):
    value = _alternative(SearchConfig, field_name)
    cfg = load_config(None, [f"search.{field_name}={json.dumps(value)}"])
    got = getattr(build_recommender(cfg)._search_config(), field_name)
    assert got == (tuple(value) if isinstance(value, list) else value)


@pytest.mark.parametrize("field_name", [f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed"])
def test_every_training_setting_reaches_the_trainer(field_name):
    value = _alternative(TrainConfig, field_name)
    cfg = load_config(None, ["model.name=mf", f"train.{field_name}={json.dumps(value)}"])
    assert getattr(_as_config(TrainConfig, build_recommender(cfg).train), field_name) == value


def test_one_seed_drives_everything():
    cfg = load_config(None, ["seed=7"])
    rec = build_recommender(cfg)
    assert rec.random_state == 7 and rec._search_config().seed == 7
    for key in ("search.seed=3", "train.seed=3"):
        with pytest.raises(ConfigError, match=r"is not a setting of its own: it is set from 'seed'"):
            load_config(None, [key])
    assert "seed" not in RunConfig().to_dict()["search"] and "seed" not in RunConfig().to_dict()["train"]


def test_every_default_is_declared_once():
    """The recommenders' constructor defaults are ModelConfig's (one home per default)."""
    import inspect

    defaults = ModelConfig()
    for name in _names():
        for cls in recommender_class(name).__mro__[:-1]:
            for p, param in inspect.signature(cls.__init__).parameters.items():
                if hasattr(defaults, p) and param.default is not inspect.Parameter.empty:
                    assert param.default == getattr(defaults, p), (cls.__name__, p)
    assert dataclasses.asdict(RunConfig().search) == {
        **dataclasses.asdict(build_recommender(RunConfig())._search_config()), "seed": 0}


def test_unknown_keys_name_the_nearest_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'model.embeding_dim'; did you mean model.embedding_dim"):
        load_config(None, ["model.embeding_dim=8"])
    f = tmp_path / "c.yaml"
    f.write_text("search:\n  a_lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'search.a_lrr'; did you mean search.a_lr"):
        load_config(f)
    with pytest.raises(ConfigError, match="did you mean search.epochs"):
        resolve_config(CNNSearchRun, None, ["search.epoch=2"])


def test_values_are_yaml_scalars_and_checked_where_parsed():
    cfg = load_config(None, ["search.a_lr=1e-3", "train.lr=2e-3"])
    assert cfg.search.a_lr == pytest.approx(1e-3) and isinstance(cfg.search.a_lr, float)
    assert parse_assignments(["a.b=1", "c=[x, y]", "d=null"]) == {"a": {"b": 1}, "c": ["x", "y"], "d": None}
    for bad, what in (("model.embedding_dim=-8", "model.embedding_dim must be an integer >= 1"),
                      ("model.embedding_dim=0", "embedding_dim must be an integer >= 1"),
                      ("device=gpu", "device must be cpu, cuda, cuda:N or mps"),
                      ("train.lr=-0.1", "train.lr must be > 0"), ("search.w_lr=0", "search.w_lr must be > 0"),
                      ("search.a_lr=-1", "search.a_lr must be > 0"), ("data.leave_k=0", "data.leave_k must be >= 1"),
                      ("data.id_type=uuid", "data.id_type must be 'int' or 'str'")):
        with pytest.raises(ConfigError, match=what):
            load_config(None, [bad])


def test_both_command_lines_take_many_assignments_per_set(tmp_path, capsys):
    cfg = load_config(None, ["search.epochs=2", "model.reg=0.5"])
    assert cfg.search.epochs == 2 and cfg.model.reg == 0.5
    ns = resolve_config(CNNSearchRun, None, ["search.epochs=2", "space.C=4", "seed=1"])
    assert ns.search.epochs == 2 and ns.space.C == 4 and ns.search.seed == 1
    from nasp.cli import main as nasp_main

    assert nasp_main(["cnn", "search", "--set", "search.epochs=2", "space.C=big"]) == 2
    assert "space.C: expected int" in capsys.readouterr().err


@pytest.mark.parametrize("cls", [CNNSearchRun, CNNTrainRun])
def test_every_nasp_cli_key_is_reachable(cls):
    for dotted in keys(cls()):
        if dotted in getattr(cls, "__derived__", {}):
            continue
        *sections, leaf = dotted.split(".")
        owner = cls()
        for s in sections:
            owner = getattr(owner, s)
        value = _alternative(type(owner), leaf) if not isinstance(getattr(owner, leaf), str) else None
        if value is None:
            continue                                # strings: free-form paths/names, type-checked only
        cfg = load(cls, None, [f"{dotted}={json.dumps(value)}"])
        node = cfg
        for s in sections:
            node = getattr(node, s)
        got = getattr(node, leaf)
        assert got == (tuple(value) if isinstance(got, tuple) else value), dotted


def test_sif_search_refuses_a_fixed_model_name(capsys):
    assert main(["search", "--set", "model.name=mf"]) == 2
    err = capsys.readouterr().err
    assert "model.name='mf'" in err and "sif train" in err and len(err.strip().splitlines()) == 1


def test_train_help_lists_the_model_names(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "fixed:<op>" in out and "mf" in out and "sif/config.py" in out


def test_embedding_dim_has_one_default_everywhere():
    import inspect

    from sif.interactions import EMBEDDING_DIM
    from sif.space import SIFSpace

    assert ModelConfig().embedding_dim == EMBEDDING_DIM
    assert inspect.signature(SIFSpace.__init__).parameters["embedding_dim"].default == EMBEDDING_DIM
    for name, cls in BASELINES.items():
        default = inspect.signature(cls.__init__).parameters["embedding_dim"].default
        assert default == EMBEDDING_DIM or name == "bias_only", name       # bias_only has no embeddings


@pytest.mark.parametrize("via", ["set", "yaml"])
def test_sif_training_time_budget_and_amp_reach_the_loop(via, tmp_path, monkeypatch):
    """train.max_seconds and train.amp are used, not only accepted: SIF's stand-alone training hands the budget to
    the shared loop (nasp.trainer.Trainer) and runs its steps under the amp value's autocast (nasp.amp)."""
    import sif.train as st
    from data_loaders import random_split
    from sif.synthetic import planted_ratings

    seen, real_trainer, real_autocast = {}, st.Trainer, st.autocast

    def trainer(*args, **kw):
        seen["max_seconds"] = kw["max_seconds"]
        return real_trainer(*args, **kw)

    def autocast(device, amp):
        seen["amp"] = amp
        return real_autocast(device, amp)

    monkeypatch.setattr(st, "Trainer", trainer)
    monkeypatch.setattr(st, "autocast", autocast)
    train = {"max_seconds": 3600.0, "amp": "bf16", "max_epochs": 1}
    model = {"name": "mf", "embedding_dim": 2}
    if via == "set":
        cfg = load_config(None, [f"{section}.{k}={v}" for section, d in (("model", model), ("train", train))
                                 for k, v in d.items()])
    else:
        f = tmp_path / "c.yaml"
        f.write_text(yaml.safe_dump({"model": model, "train": train}))
        cfg = load_config(f)
    tr, va, _ = random_split(planted_ratings("multiply", num_users=15, num_items=20, n=200, seed=0), (0.8, 0.1, 0.1))
    build_recommender(cfg).fit(tr, va, show_progress=False)
    assert seen == {"max_seconds": 3600.0, "amp": "bf16"}
