import json
import pickle

import numpy as np
import pytest
import torch
import yaml

from nasp.cli import CNNSearchRun, CNNTrainRun, main, resolve_config
from nasp.search import SearchConfig, Searcher
from nasp.spaces.cnn import CNNSearchSpace, ImageClassificationTask
from nasp.spaces.cnn.genotypes import from_core
from nasp.spaces.cnn.model import NetworkCIFAR
from nasp.streams import TensorLoader
from nasp.train.image import TrainConfig, train_classifier


def _toy_images(n, seed):
    """Two classes told apart by the mean brightness of the red channel (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.5
    x[:, 0] += (2 * y - 1).float().view(-1, 1, 1)
    return x, y


@pytest.mark.parametrize("strategy", ["nasp", "darts1", "darts2"])
def test_tiny_search_and_evaluation(strategy, device, tmp_path):
    x, y = _toy_images(64, 0)
    xv, yv = _toy_images(32, 1)
    space = CNNSearchSpace(C=4, layers=2, steps=2, multiplier=2, num_classes=2, seed=0,
                           alpha_init="darts" if strategy.startswith("darts") else "nasp",
                           derive_rule="darts" if strategy.startswith("darts") else "prox")
    cfg = SearchConfig(strategy=strategy, epochs=2, w_lr=0.05, a_lr=3e-3)
    s = Searcher(space, ImageClassificationTask(), cfg, device=device, run_dir=tmp_path / "s", show_progress=False)
    result = s.fit(TensorLoader(x, y, batch_size=16), TensorLoader(xv, yv, batch_size=16))
    assert len(result.history) == 2 and (tmp_path / "s" / "genotype.json").is_file()
    cell = from_core(result.genotype, steps=2)
    net = NetworkCIFAR(cell, C=4, num_classes=2, layers=2, auxiliary=False)
    out = train_classifier(net, TensorLoader(x, y, batch_size=16, drop_last=True), TensorLoader(xv, yv, batch_size=16),
                           TrainConfig(epochs=2, lr=0.05, drop_path=0.1), device=device, input_size=(3, 8, 8))
    assert 0 <= out.test_accuracy <= 1 and out.parameters > 0 and out.multiply_adds > 0
    assert len(out.history) == 2


def test_trainer_resumes(tmp_path):
    x, y = _toy_images(32, 0)
    from nasp.spaces.cnn.genotypes import DARTS_V2

    def run(epochs):
        torch.manual_seed(0)
        net = NetworkCIFAR(DARTS_V2, C=4, num_classes=2, layers=2, auxiliary=False)
        return train_classifier(net, TensorLoader(x, y, batch_size=16), TensorLoader(x, y, batch_size=16),
                                TrainConfig(epochs=epochs, lr=0.05), run_dir=tmp_path / "t", input_size=(3, 8, 8))

    run(1)
    resumed = run(2)
    assert [h["epoch"] for h in resumed.history] == [0, 1]


def test_config_layers_and_rejections(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"space": {"C": 8}, "search": {"epochs": 3}}))
    cfg = resolve_config(CNNSearchRun, f, ["search.a_lr=1e-3", "data.batch_size=8", "search.w_lr=1"])
    assert cfg.space.C == 8 and cfg.search.epochs == 3 and cfg.search.a_lr == 1e-3
    assert cfg.search.w_lr == 1.0 and isinstance(cfg.search.w_lr, float)
    with pytest.raises(ValueError, match="unknown config key 'search.epoch'; did you mean search.epochs"):
        resolve_config(CNNSearchRun, None, ["search.epoch=3"])
    with pytest.raises(ValueError, match="space.C: expected int"):
        resolve_config(CNNSearchRun, None, ["space.C=big"])
    with pytest.raises(ValueError, match="model.auxiliary: expected bool"):
        resolve_config(CNNTrainRun, None, ["model.auxiliary=3"])
    with pytest.raises(ValueError, match="'search.seed' is not a setting of its own: it is set from 'seed'"):
        resolve_config(CNNSearchRun, None, ["search.seed=3"])
    assert resolve_config(CNNSearchRun, None, ["seed=3"]).search.seed == 3
    assert main(["cnn", "train", "--set", "nope=1"]) == 2


def _cifar_folder(root):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, 8)]}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return d


def test_cli_search_then_train(tmp_path, capsys):
    data = _cifar_folder(tmp_path)
    common = ["--set", f"data.path={data}", "--set", "data.batch_size=8", "--quiet"]
    run = tmp_path / "search"
    assert main(["cnn", "search", *common, "--set", f"run_dir={run}", "--set", "space.C=4", "--set", "space.layers=2",
                 "--set", "space.steps=2", "--set", "space.multiplier=2", "--set", "search.epochs=1"]) == 0
    resolved = yaml.safe_load((run / "resolved_config.yaml").read_text())
    assert resolved["search"]["epochs"] == 1
    assert (run / "cell_genotype.json").is_file() and (run / "cell_normal.dot").is_file()
    train = tmp_path / "train"
    assert main(["cnn", "train", *common, "--set", f"run_dir={train}", "--set",
                 f"model.genotype={run / 'cell_genotype.json'}", "--set", "model.C=4", "--set", "model.layers=2",
                 "--set", "model.auxiliary=false", "--set", "train.epochs=1"]) == 0
    res = json.loads((train / "results.json").read_text())
    assert res["parameters"] > 0 and res["multiply_adds"] > 0 and 0 <= res["test_accuracy"] <= 1
