"""Command line: ``nasp cnn search`` and ``nasp cnn train``.

Settings are layered: defaults (below), then a YAML file (``--config``, read with yaml.safe_load), then
``--set section.key=value`` overrides (values parsed as YAML scalars). Unknown keys and values of the wrong
type are rejected with the key named. The resolved configuration is written into the run folder.

    nasp cnn search --config configs/cnn_search_cifar10.yaml --set search.epochs=3 --set run_dir=runs/s1
    nasp cnn train --config configs/cnn_train_cifar10.yaml --set model.genotype=runs/s1/cell_genotype.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from .search import SearchConfig, Searcher
from .train.image import TrainConfig, train_classifier

__all__ = ["main", "SEARCH_DEFAULTS", "TRAIN_DEFAULTS", "resolve_config", "run_search", "run_train", "load_data"]

_DATA = {"source": "cifar10", "path": "", "test_path": "", "num_classes": 10, "subset": 0, "batch_size": 64,
         "cutout": 0, "train_fraction": 0.5, "image_size": 32, "seed": 0}

SEARCH_DEFAULTS: dict[str, Any] = {
    "data": dict(_DATA),
    "space": {"C": 16, "layers": 8, "steps": 4, "multiplier": 4, "op_set": "darts", "derive_rule": "prox",
              "alpha_subbatch": 0},
    "search": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(SearchConfig()).items()},
    "device": "cpu", "threads": 0, "channels_last": False, "run_dir": "runs/cnn_search", "eval_batches": 0,
}

TRAIN_DEFAULTS: dict[str, Any] = {
    "data": {**_DATA, "batch_size": 96, "cutout": 16},
    "model": {"network": "cifar", "genotype": "DARTS_V2", "C": 36, "layers": 20, "auxiliary": True},
    "train": asdict(TrainConfig()),
    "device": "cpu", "threads": 0, "run_dir": "runs/cnn_train",
}


# ---- configuration ---------------------------------------------------------------------------------------------
def _check_type(key: str, default: Any, value: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str):     # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key}: expected float, got {value!r}") from None
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    if type(value) is not type(default):
        raise ValueError(f"{key}: expected {type(default).__name__}, got {type(value).__name__} {value!r}")
    return value


def _merge(base: dict, update: dict, prefix: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        key = f"{prefix}{k}"
        if k not in out:
            raise ValueError(f"unknown config key {key!r}; known here: {sorted(out)}")
        if isinstance(out[k], dict):
            if not isinstance(v, dict):
                raise ValueError(f"{key}: expected a mapping, got {v!r}")
            out[k] = _merge(out[k], v, f"{key}.")
        else:
            out[k] = _check_type(key, out[k], v)
    return out


def resolve_config(defaults: dict, config_file: str | Path | None = None, overrides: list[str] = ()) -> dict:
    """defaults <- YAML file <- ``key.sub=value`` overrides, type-checked against the defaults."""
    cfg = copy.deepcopy(defaults)
    if config_file:
        loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: the top level must be a mapping")
        cfg = _merge(cfg, loaded)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        nested: dict = {}
        cur = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        cfg = _merge(cfg, nested)
    return cfg


def _write_resolved(cfg: dict, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


# ---- data -----------------------------------------------------------------------------------------------------
def _resolve_path(p: str) -> Path:
    path = Path(p)
    if not path.exists() and os.environ.get("NASP_DATA_DIR"):
        path = Path(os.environ["NASP_DATA_DIR"], p)
    if not path.exists():
        raise FileNotFoundError(f"data path {p!r} not found (also looked under NASP_DATA_DIR)")
    return path


def load_data(d: dict, split: str):
    """An ImageSet for ``split`` ("train" or "test") of the configured source."""
    from data_loaders.images import load_cifar, load_image_folder, load_image_zip

    if d["source"] in ("cifar10", "cifar100"):
        data = load_cifar(_resolve_path(d["path"]), d["source"], split)
    elif d["source"] in ("zip", "folder"):
        p = d["path"] if split == "train" else (d["test_path"] or d["path"])
        path = _resolve_path(p)
        if path.is_file() and path.suffix == ".zip":
            data = load_image_zip(path, size=d["image_size"])
        else:
            data = load_image_folder(path / split if (path / split).is_dir() else path, size=d["image_size"])
    else:
        raise ValueError(f"data.source must be cifar10, cifar100, zip or folder, got {d['source']!r}")
    if d["subset"] and split == "train" and d["subset"] < len(data):
        g = torch.Generator().manual_seed(d["seed"])
        data = data.subset(torch.randperm(len(data), generator=g)[: d["subset"]])
    return data


def _stats(source: str):
    from data_loaders import augment as A

    return (A.CIFAR100_MEAN, A.CIFAR100_STD) if source == "cifar100" else (A.CIFAR10_MEAN, A.CIFAR10_STD)


# ---- commands -----------------------------------------------------------------------------------------------------
def run_search(cfg: dict, show_progress: bool = True) -> dict:
    """Search a cell with the configured strategy; writes genotype JSON + pictures into run_dir."""
    from data_loaders.augment import Augment
    from data_loaders.images import ImageLoader, search_split

    from .spaces.cnn import CNNSearchSpace, ImageClassificationTask
    from .spaces.cnn.genotypes import draw, from_core

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    d, sp, run_dir = cfg["data"], cfg["space"], Path(cfg["run_dir"])
    _write_resolved(cfg, run_dir)
    data = load_data(d, "train")
    tr, va = search_split(len(data), d["seed"], d["train_fraction"])
    mean, std = _stats(d["source"])
    train = ImageLoader(data.images[tr], data.labels[tr], d["batch_size"],
                        augment=Augment(mean, std, cutout=d["cutout"]), seed=d["seed"], drop_last=True)
    valid = ImageLoader(data.images[va], data.labels[va], d["batch_size"], augment=Augment(mean, std, train=False),
                        seed=d["seed"] + 1, drop_last=True)
    scfg = SearchConfig.from_dict(cfg["search"])
    space = CNNSearchSpace(C=sp["C"], num_classes=d["num_classes"], layers=sp["layers"], steps=sp["steps"],
                           multiplier=sp["multiplier"], op_set=sp["op_set"], alpha_init=scfg.resolved_alpha_init,
                           seed=scfg.seed, derive_rule=sp["derive_rule"], alpha_subbatch=sp["alpha_subbatch"] or None)
    if cfg["channels_last"]:
        space = space.to(memory_format=torch.channels_last)
    task = ImageClassificationTask(channels_last=cfg["channels_last"], max_eval_batches=cfg["eval_batches"] or None)
    searcher = Searcher(space, task, scfg, device=cfg["device"], run_dir=run_dir, show_progress=show_progress,
                        extra_config={"cli": cfg})
    result = searcher.fit(train, valid)
    cell = from_core(result.genotype, sp["steps"])
    cell.to_json(run_dir / "cell_genotype.json")
    best = from_core(result.best_genotype, sp["steps"])
    best.to_json(run_dir / "best_cell_genotype.json")
    pictures = draw(cell, run_dir / "cell")
    summary = {"genotype": cell.to_dict(), "best_genotype": best.to_dict(), "best_epoch": result.best_epoch,
               "valid_accuracy": [h.get("valid_accuracy") for h in result.history],
               "seconds": result.seconds, "pictures": [str(p) for p in pictures]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_train(cfg: dict, show_progress: bool = True) -> dict:
    """Train a genotype stand-alone, evaluate on the test split, report parameters and multiply-adds."""
    from data_loaders.augment import IMAGENET_MEAN, IMAGENET_STD, Augment
    from data_loaders.images import ImageLoader

    from .spaces.cnn.genotypes import draw, get_genotype
    from .spaces.cnn.model import NetworkCIFAR, NetworkImageNet

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    d, m, run_dir = cfg["data"], cfg["model"], Path(cfg["run_dir"])
    _write_resolved(cfg, run_dir)
    genotype = get_genotype(m["genotype"])
    if m["network"] == "cifar":
        net = NetworkCIFAR(genotype, m["C"], d["num_classes"], m["layers"], m["auxiliary"])
        mean, std = _stats(d["source"])
    elif m["network"] == "imagenet":
        net = NetworkImageNet(genotype, m["C"], d["num_classes"], m["layers"], m["auxiliary"])
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        raise ValueError(f"model.network must be 'cifar' or 'imagenet', got {m['network']!r}")
    train_set, test_set = load_data(d, "train"), load_data(d, "test")
    train = ImageLoader(train_set.images, train_set.labels, d["batch_size"],
                        augment=Augment(mean, std, cutout=d["cutout"]), seed=d["seed"], drop_last=True)
    test = ImageLoader(test_set.images, test_set.labels, d["batch_size"], shuffle=False,
                       augment=Augment(mean, std, train=False))
    tcfg = TrainConfig.from_dict(cfg["train"])
    size = tuple(train_set.images.shape[1:])
    result = train_classifier(net, train, test, tcfg, device=cfg["device"], run_dir=run_dir, input_size=size)
    pictures = draw(genotype, run_dir / "cell")
    summary = {"test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
               "parameters": result.parameters, "multiply_adds": result.multiply_adds,
               "seconds": result.seconds, "history": result.history, "pictures": [str(p) for p in pictures]}
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nasp", description="NASP architecture search")
    groups = p.add_subparsers(dest="group", required=True)
    cnn = groups.add_parser("cnn", help="image-cell search space").add_subparsers(dest="cmd", required=True)
    for name, helptext in (("search", "search a cell"), ("train", "train a genotype stand-alone")):
        sp = cnn.add_parser(name, help=helptext)
        sp.add_argument("--config", help="YAML file layered over the defaults")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, e.g. search.epochs=3")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        defaults = SEARCH_DEFAULTS if args.cmd == "search" else TRAIN_DEFAULTS
        cfg = resolve_config(defaults, args.config, args.set)
    except (ValueError, FileNotFoundError) as e:
        print(f"nasp: error: {e}", file=sys.stderr)
        return 2
    run = run_search if args.cmd == "search" else run_train
    summary = run(cfg, show_progress=not args.quiet)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
