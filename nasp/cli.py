"""Command line: ``nasp cnn search | train`` and ``nasp rnn search | train``.

Settings are the dataclasses of :mod:`nasp.commands.cnn` and :mod:`nasp.commands.rnn`, read by
:mod:`nasp.config`'s loader (the one the ``sif`` command uses too): defaults, then a YAML file (``--config``), then
``--set section.key=value ...`` (values parsed as YAML). Unknown keys and values of the wrong type are rejected in
one line naming the key. The resolved configuration is written into the run folder.

    nasp cnn search --config configs/cnn_search_cifar10.yaml --set search.epochs=3 run_dir=runs/s1
    nasp cnn train --config configs/cnn_train_cifar10.yaml --set model.genotype=runs/s1/cell_genotype.json
    nasp rnn search --config configs/rnn_search_ptb_small.yaml
    nasp rnn train --config configs/rnn_train_ptb_small.yaml --set model.genotype=runs/rnn_search/rnn_genotype.json
"""

from __future__ import annotations

import argparse
import json
import sys

from .commands.cnn import (
    CNNModelConfig,
    CNNSearchRun,
    CNNSpaceConfig,
    CNNTrainRun,
    ImageDataConfig,
    load_data,
    resolve_config,
    run_search,
    run_train,
)
from .commands.rnn import RNNSearchRun, RNNTrainRun, run_rnn_search, run_rnn_train
from .config import ConfigError, add_config_arguments
from .search import NonFiniteLossError

__all__ = ["main", "ImageDataConfig", "CNNSpaceConfig", "CNNModelConfig", "CNNSearchRun", "CNNTrainRun",
           "RNNSearchRun", "RNNTrainRun", "resolve_config", "run_search", "run_train", "load_data", "COMMANDS"]

# (space, command) -> (its run configuration, the function that runs it, help)
COMMANDS = {
    ("cnn", "search"): (CNNSearchRun, run_search, "search an image cell"),
    ("cnn", "train"): (CNNTrainRun, run_train, "train an image cell stand-alone"),
    ("rnn", "search"): (RNNSearchRun, run_rnn_search, "search a recurrent cell on a corpus"),
    ("rnn", "train"): (RNNTrainRun, run_rnn_train, "train a recurrent cell stand-alone as a language model"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nasp", description="NASP architecture search",
                                epilog="Exit codes: 0 ok, 2 bad input (one line naming the key or file), 3 a loss "
                                       "became NaN/inf (the last good checkpoint is kept).")
    groups = p.add_subparsers(dest="group", required=True)
    spaces = {}
    for (space, cmd), (cls, _, helptext) in COMMANDS.items():
        if space not in spaces:
            spaces[space] = groups.add_parser(space, help=f"the {space} space").add_subparsers(dest="cmd",
                                                                                               required=True)
        sp = spaces[space].add_parser(cmd, help=helptext, epilog=f"Config keys: the fields of {cls.__name__} and "
                                      f"its sections ({cls.__module__}).")
        add_config_arguments(sp)
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
        sp.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input is one line on stderr and exit code 2, a non-finite loss exit code 3."""
    args = _parser().parse_args(argv)
    cls, run, _ = COMMANDS[(args.group, args.cmd)]
    try:
        cfg = resolve_config(cls, args.config, args.set)
        summary = run(cfg, show_progress=not args.quiet)
    except NonFiniteLossError as e:
        if args.debug:
            raise
        print(f"nasp: stopped: {' '.join(str(e).split())}", file=sys.stderr)
        return 3
    except (ConfigError, ValueError, KeyError, FileNotFoundError, OSError) as e:
        if args.debug:
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"nasp: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
