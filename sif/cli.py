"""Command line: ``sif search | train | evaluate | benchmark``.

    sif search --config configs/sif_ml100k.yaml --set search.epochs=10
    sif train --config configs/sif_ml100k.yaml --set model.name=mf
    sif evaluate --run runs/sif-ml100k/search
    sif benchmark --config configs/sif_ml100k_folds.yaml
    torchrun --nproc_per_node=2 -m sif.cli search --config configs/sif_ml100k.yaml   # data parallel

Under torchrun (WORLD_SIZE > 1) every command joins a process group (gloo on CPU, nccl on CUDA with one GPU per local
rank, see :mod:`nasp.distributed`), each rank trains on its slice of every global batch, and rank 0 alone writes
the run folder. Each command writes into its own folder under out_dir (search/, train-<model>/, benchmark/), which
holds fingerprint.json (see :mod:`sif.runs`), the resolved config (config.yaml), structured logs (run.log as JSON lines,
the search's log.jsonl, train_log.jsonl), checkpoints (a rerun of the same command resumes), the saved model, the
genotype as JSON, a picture of the found interaction function and results.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nasp import distributed as nd
from nasp.config import ConfigError, add_config_arguments, config_from_dict
from nasp.search import NonFiniteLossError

from .baselines import BASELINES
from .benchmark import merge_benchmarks, run_benchmark, train_seconds, valid_scores  # noqa: F401 (merge: API)
from .build import build_recommender, recommender_kwargs  # noqa: F401 (recommender_kwargs: API)
from .config import ModelConfig, RunConfig, load_config
from .data import load_splits
from .ensemble import lead_model
from .estimator import check_device_available, constructor_params
from .peers import SURPRISE_PEERS
from .recommender import (
    SIF_VARIANTS,
    SIFRecommender,
    load_recommender,
    recommender_class,
)
from .runs import RunFolderError, command_folder, data_fingerprint, fingerprint, prepare_run_folder
from .train import TrainConfig

__all__ = ["main", "build_recommender", "run_fit", "run_benchmark"]

log = logging.getLogger("sif")
EXIT_USAGE, EXIT_NONFINITE = 2, 3          # documented in the README (command line)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
                           "message": record.getMessage()})


def _setup_logging(run_dir: Path) -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def _write_config(cfg: RunConfig, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def run_fit(cfg: RunConfig, run_dir: Path, name: str | None = None, splits=None) -> dict[str, Any]:
    """Fit one model on the configured split (``splits``: the (train, valid, test) already read; resuming
    checkpoints in ``run_dir``), evaluate valid and test once, save everything; returns the results dict."""
    train, valid, test = splits if splits is not None else load_splits(cfg.data, cfg.seed)
    log.info("data: train=%d valid=%d test=%d users=%d items=%d contexts=%d", len(train), len(valid), len(test),
             train.num_users, train.num_items, train.num_contexts)
    rec = build_recommender(cfg, name)
    t0 = time.perf_counter()
    rec.fit(train, valid, show_progress=cfg.show_progress, run_dir=run_dir)
    seconds = time.perf_counter() - t0
    results = {"model": name or cfg.model.name, "valid": valid_scores(rec, valid), "test": rec.score(test),
               "seconds_total": seconds, "seconds_train": train_seconds(rec),
               "best_epoch": rec.train_result_.best_epoch, "n_train": len(train), "n_test": len(test),
               "context": cfg.data.context, "num_contexts": train.num_contexts,
               "rating_scale": list(train.rating_scale),
               "rating_scale_source": getattr(train, "rating_scale_source", "inferred"),
               "dropped": dict(train.dropped)}            # rows data.drop_invalid dropped from the file, by reason
    results["test_cold"] = cold_counts(train.concat(valid) if getattr(rec, "refit", False) else train, test)
    if results["test_cold"]["ratings"]:
        log.warning("test: %d of %d ratings have a user or item with no training rating (cold start; they are "
                    "scored from the untrained embeddings and biases, and counted in the test metrics)",
                    results["test_cold"]["ratings"], len(test))
    if isinstance(rec, SIFRecommender):
        results.update(genotype=rec.genotype_.to_dict(), op=rec.op_, seconds_search=rec.search_result_.seconds,
                       search_epochs=len(rec.search_result_.history))
        if getattr(rec, "selection_", None) is not None:
            results["race"] = rec.selection_.summary()
    if nd.get_world_size() > 1:
        results["world_size"] = nd.get_world_size()
    if not nd.is_main_process():         # data parallel: rank 0 writes the run folder
        return results
    if isinstance(rec, SIFRecommender):
        rec.genotype_.to_json(run_dir / "genotype.json")
    if rec.model_.searchable:
        from .draw import draw_alphas, draw_interaction

        members = getattr(rec, "ensemble_", [])
        draw_interaction(lead_model(rec.model_), run_dir / "interaction",     # an ensemble: the race's winner
                         title=f"found interaction: {members[0]}, averaged with {' and '.join(members[1:])} (the "
                               "race's ensemble)" if len(members) > 1 else None)
        for k, (op, member) in enumerate(zip(members[1:], getattr(rec.model_, "members", [])[1:], strict=True)):
            draw_interaction(member, run_dir / f"interaction-{op}",            # and each further member
                             title=f"the race's ensemble, member {k + 2} of {len(members)}: {op} (averaged with "
                                   f"{members[0]})")
        if isinstance(rec, SIFRecommender):
            draw_alphas(rec.search_result_.history, list(rec.search_candidates_), rec.op_, run_dir / "alphas")
    rec.save(run_dir / "model")
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log.info("results: %s", json.dumps(results))
    return results


def cold_counts(train, test) -> dict[str, int]:
    """Test ratings whose user or item has no rating in ``train`` (the data the model was fitted on), and the
    distinct such users and items."""
    seen_u = np.bincount(train.users.numpy(), minlength=train.num_users) > 0      # (num_users,)
    seen_i = np.bincount(train.items.numpy(), minlength=train.num_items) > 0      # (num_items,)
    cold_u, cold_i = ~seen_u[test.users.numpy()], ~seen_i[test.items.numpy()]    # (n_test,)
    return {"ratings": int((cold_u | cold_i).sum()), "users": len(np.unique(test.users.numpy()[cold_u])),
            "items": len(np.unique(test.items.numpy()[cold_i]))}


_MODELS_HELP = (f"model names (model.name): {', '.join(SIF_VARIANTS)} (sif search); fixed:<op> with op one of "
                f"plus, multiply, max, min, concat; baselines: {', '.join(sorted(BASELINES))}; peers (sif benchmark "
                f"only): {', '.join(SURPRISE_PEERS)}. Every config key is "
                "a field of the dataclasses in sif/config.py (model, data, train, benchmark; search: "
                "nasp.search.SearchConfig), documented there; --set section.key=value reaches each one.")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sif", description="Interaction-function search for collaborative filtering",
                                epilog=f"Exit codes: 0 ok, {EXIT_USAGE} bad input (one line naming the key, file or "
                                       f"line), {EXIT_NONFINITE} a loss became NaN/inf (the last good checkpoint "
                                       "is kept).")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("search", "search the interaction function, train it stand-alone, evaluate"),
                        ("train", "train one model (model.name) stand-alone and evaluate"),
                        ("benchmark", "many models x folds/seeds in one table")):
        sp = sub.add_parser(name, help=help_, description=help_, epilog=_MODELS_HELP)
        add_config_arguments(sp)
        sp.add_argument("--out", help="parent of the run folder (default: out_dir of the config); the command "
                                      "writes into <out>/search, <out>/train-<model> or <out>/benchmark")
        sp.add_argument("--fresh", action="store_true",
                        help="a run folder made with other settings or data is moved aside (<folder>.old-N) and "
                             "the run starts over; without it such a folder is refused, and one made with the "
                             "same settings and data is resumed")
        sp.add_argument("--debug", action="store_true", help="show the traceback of an error")
    ev = sub.add_parser("evaluate", help="evaluate a saved run's model on its test split")
    ev.add_argument("--run", required=True, help="a run folder written by sif search / sif train")
    ev.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error is one line on stderr and exit code 2, a non-finite loss exit code 3."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except NonFiniteLossError as e:
        if args.debug:
            raise
        print(f"sif {args.command}: stopped: {_one_line(e)}", file=sys.stderr)
        return EXIT_NONFINITE
    except (ConfigError, FileNotFoundError, KeyError, TypeError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"sif {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        nd.cleanup()


def _one_line(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(msg.split()) or type(e).__name__


def _model_name(cfg: RunConfig, command: str) -> str:
    name = cfg.model.name
    if command == "search" and name not in SIF_VARIANTS:
        raise ConfigError(f"model.name={name!r}: sif search searches an interaction function, so model.name must be "
                          f"one of {', '.join(SIF_VARIANTS)} (use sif train for fixed models and baselines)")
    if command == "train" and name in SIF_VARIANTS:
        raise ConfigError(f"model.name={name!r}: sif train trains one fixed model: set model.name to fixed:<op> or "
                          f"a baseline (use sif search to search)")
    if name in SURPRISE_PEERS:
        raise ConfigError(f"model.name={name!r}: the Surprise peers run in sif benchmark only (benchmark.models)")
    recommender_class(name)                   # an unknown name fails here, before any run folder is made
    return name


def _check_positives(cfg: RunConfig, splits) -> None:
    """Implicit tasks: every split needs a positive (rating >= model.positive_threshold), else the fit learns nothing
    or the metrics are NaN; refused before a run folder is made."""
    threshold = cfg.model.positive_threshold
    if cfg.model.task == "rating" or threshold is None:
        return
    for part, ds in zip(("train", "valid", "test"), splits, strict=True):
        if not bool((ds.ratings >= threshold).any()):
            raise ConfigError(f"model.positive_threshold={threshold}: the {part} split has no rating >= it (ratings "
                              f"lie in {list(ds.rating_scale)}), so model.task={cfg.model.task} has no positives there")


def _check_benchmark(cfg: RunConfig) -> None:
    """Every ``benchmark.models`` name exists, and every ``benchmark.tune`` grid names a known model and lists
    valid values of settings that model takes (a grid over a setting the model ignores would be a silent no-op).
    Grids of models not in ``benchmark.models`` are allowed (benchmarks/sif_tensor_benchmark.py reads them)."""
    for spec in cfg.benchmark.models:
        recommender_class(spec.partition("@")[0])
    model_keys, train_keys = {f.name for f in fields(ModelConfig)}, {f.name for f in fields(TrainConfig)}
    for spec, grid in cfg.benchmark.tune.items():
        name = spec.partition("@")[0]
        taken = constructor_params(recommender_class(name))
        for key, values in grid.items():
            where = f"benchmark.tune.{spec}.{key}"
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: expected a non-empty list of values, got {values!r}")
            if key not in train_keys and not (key in model_keys and key in taken):
                what = "not a model or train setting" if key not in model_keys else f"not a setting of {name!r}"
                raise ConfigError(f"{where}: {what} (a grid over it would change nothing)")
            for v in values:
                try:
                    if key in train_keys:
                        config_from_dict(TrainConfig, {key: v})
                    else:
                        run_cfg = copy.deepcopy(cfg)
                        setattr(run_cfg.model, key, v)
                        build_recommender(run_cfg, name, strict=False)       # the constructor's own checks
                except (ConfigError, ValueError, TypeError) as e:
                    raise ConfigError(f"{where}: value {v!r}: {_one_line(e)}") from None


def _dispatch(args) -> int:
    if args.command == "evaluate":
        return _evaluate(Path(args.run))
    cfg = load_config(args.config, args.set)
    check_device_available(cfg.device)           # before a run folder is made (torch would fail mid-run)
    name = _model_name(cfg, args.command) if args.command != "benchmark" else None
    if args.command == "benchmark":
        _check_benchmark(cfg)                 # every model and tune setting, before anything trains
    splits = None
    if name is not None:
        build_recommender(cfg, name)          # every setting checked before a run folder is made
        splits = load_splits(cfg.data, cfg.seed)          # a missing or bad data file fails here too
        _check_positives(cfg, splits)
        _check_init_from(cfg, splits)
        log.info("data: train=%d valid=%d test=%d users=%d items=%d contexts=%d; rating scale %s (%s)",
                 *(len(s) for s in splits), splits[0].num_users, splits[0].num_items, splits[0].num_contexts,
                 list(splits[0].rating_scale), getattr(splits[0], "rating_scale_source", "inferred"))
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    run_dir = command_folder(args.out or cfg.out_dir, args.command, name)
    main = nd.is_main_process() if nd.is_distributed() else int(os.environ.get("RANK", "0")) == 0
    if main:
        data = dict(zip(("train", "valid", "test"), splits, strict=True)) if splits is not None else {}
        run_dir, resumed = prepare_run_folder(run_dir, fingerprint(cfg.to_dict(), data, args.command), args.fresh)
        if resumed:
            print(f"sif {args.command}: resuming the run in {run_dir} (same settings and data; --fresh starts "
                  "over)", file=sys.stderr)
    handler = _setup_logging(run_dir) if main else None
    if main:
        _write_config(cfg, run_dir)
    device = nd.init_distributed(cfg.device)      # joins the process group under torchrun, else a no-op
    if nd.is_distributed():
        cfg.device = str(device)
    try:
        if args.command == "benchmark":
            run_benchmark(cfg, run_dir)
        else:
            results = run_fit(cfg, run_dir, name, splits)
            if nd.is_main_process():
                _print_results(results, run_dir)
    except Exception as e:
        log.error("%s: %s", type(e).__name__, _one_line(e))
        raise
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    return 0


def _check_init_from(cfg: RunConfig, splits) -> None:
    """``train.init_from`` from a run of other users and items is refused: its table rows would be other people and
    other items, trained on silently (the shapes alone can match). The run is found by the fingerprint.json of the
    checkpoint's folder or one of the two above it (``train_checkpoint.pt``, ``model/model.pt``); without one the
    data cannot be checked, which is logged, as is a run on the same ids but other training ratings."""
    path = cfg.train.init_from
    if not path:
        return
    where = Path(path).expanduser()
    stored = next((d / "fingerprint.json" for d in list(where.parents)[:3] if (d / "fingerprint.json").is_file()),
                  None)
    if stored is None:
        log.warning("train.init_from=%s: no run folder (fingerprint.json) around it, so the data it was made from "
                    "is not checked", path)
        return
    try:
        old = json.loads(stored.read_text()).get("data", {})
    except (ValueError, AttributeError):
        raise ConfigError(f"train.init_from={path}: {stored} is not readable JSON") from None
    now = data_fingerprint(dict(zip(("train", "valid", "test"), splits, strict=True)))
    if "ids_sha256" in old and old["ids_sha256"] != now["ids_sha256"]:
        raise ConfigError(f"train.init_from={path}: its run ({stored.parent}) was made from other users and items "
                          "(the id maps differ), so its rows would stand for other people and items; train without "
                          "train.init_from")
    if old.get("train") != now["train"]:
        log.warning("train.init_from=%s: its run was made from other training ratings (same users and items)", path)


def _evaluate(run_dir: Path) -> int:
    """Re-evaluate a saved run on its split; refuses when the data no longer is what the run was made from."""
    if not (run_dir / "fingerprint.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder of sif search or sif train (no fingerprint.json); "
                                "pass the command's folder, e.g. runs/sif-ml100k/search")
    cfg = load_config(run_dir / "config.yaml")
    splits = load_splits(cfg.data, cfg.seed)
    stored = json.loads((run_dir / "fingerprint.json").read_text())
    now = data_fingerprint(dict(zip(("train", "valid", "test"), splits, strict=True)))
    if stored.get("data") != now:
        raise RunFolderError(f"{run_dir}: the data differ from the data this run was made from (file content, "
                             "ratings, rows or split changed); evaluating it would give other numbers")
    check_device_available(cfg.device)
    rec = load_recommender(run_dir / "model", device=cfg.device)
    out = {"valid": rec.score(splits[1]), "test": rec.score(splits[2])}
    print(json.dumps(out, indent=2))
    return 0


def _print_results(r: dict[str, Any], run_dir: Path) -> None:
    head = f"model={r['model']}" + (f" found={r['op']}" if "op" in r else "")
    members = ((r.get("race") or {}).get("ensemble") or {}).get("members", [])
    if len(members) > 1:                        # the scores below are the average's, not the winner's alone
        head += f" averaged with the race's fits of {' + '.join(members[1:])} (race_ensemble)"
    if "rmse" in r["test"]:
        scores = (f"valid RMSE {r['valid']['rmse']:.4f}   test RMSE {r['test']['rmse']:.4f}   "
                  f"test MAE {r['test']['mae']:.4f}   (z-scale test RMSE {r['test']['rmse_z']:.4f})")
    else:
        scores = "   ".join(f"test {k} {v:.4f}" if k != "users" else f"({v:.0f} test users)"
                           for k, v in r["test"].items() if isinstance(v, (int, float)))
    scale = f"  rating scale {r['rating_scale']} ({r['rating_scale_source']})\n" if "rating_scale" in r else ""
    cold = r.get("test_cold", {})
    if cold.get("ratings"):
        scale += (f"  cold start: {cold['ratings']} of {r['n_test']} test ratings have a user ({cold['users']} users) "
                  f"or item ({cold['items']} items) without training ratings\n")
    print(f"{head}\n  {scores}\n{scale}"
          f"  search {r.get('seconds_search', 0.0):.1f}s, stand-alone training {r['seconds_train']:.1f}s\n"
          f"  run folder: {run_dir}")


if __name__ == "__main__":
    raise SystemExit(main())
