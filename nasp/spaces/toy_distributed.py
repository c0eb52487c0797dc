"""A runnable data-parallel NASP search on the toy space (the smallest example of :mod:`nasp.distributed`).

    python -m nasp.spaces.toy_distributed --out runs/toy                                   # one process
    torchrun --standalone --nproc_per_node=2 -m nasp.spaces.toy_distributed --out runs/toy  # two ranks, gloo on CPU

Both print the same genotype: the global batch (``--batch-size``) is split over the ranks, gradients are averaged.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from .. import distributed as nd
from ..search import SearchConfig, Searcher, SearchResult
from ..streams import TensorLoader
from .toy import ToySpace, ToyTask, make_toy_data, random_planted

__all__ = ["toy_search", "main"]


def toy_search(run_dir: str | Path | None, epochs: int = 3, n_train: int = 512, n_valid: int = 256,
               batch_size: int = 64, checkpoint_every: int = 0, seed: int = 0, device: str = "cpu",
               strategy: str = "nasp", before_fit: Callable[[Searcher], None] | None = None
               ) -> tuple[Searcher, SearchResult]:
    """Search the toy space (3 inputs, 2 nodes, a planted answer); data parallel inside a process group.

    ``batch_size`` is the global batch (divisible by the world size); ``before_fit(searcher)`` may install hooks.
    """
    planted = random_planted(3, 2, seed)
    x, y = make_toy_data(n_train, planted, seed=seed, teacher_seed=seed)
    xv, yv = make_toy_data(n_valid, planted, seed=seed + 1000, teacher_seed=seed)
    train = nd.shard_if_distributed(TensorLoader(x, y, batch_size=batch_size, seed=seed))
    valid = nd.shard_if_distributed(TensorLoader(xv, yv, batch_size=batch_size, seed=seed + 1))
    evaluate = TensorLoader(xv, yv, batch_size=n_valid, shuffle=False)
    config = SearchConfig(strategy=strategy, epochs=epochs, seed=seed, w_lr=0.05, w_weight_decay=0.0, a_lr=3e-3,
                          checkpoint_every=checkpoint_every)
    space = ToySpace(seed=seed, alpha_init="darts" if strategy.startswith("darts") else "nasp")
    searcher = nd.make_searcher(space, ToyTask(), config, device=device, run_dir=run_dir, show_progress=False)
    if before_fit is not None:
        before_fit(searcher)
    return searcher, searcher.fit(train, valid, evaluate)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nasp.spaces.toy_distributed", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="run folder (checkpoints, log, genotype); rank 0 writes it")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--strategy", default="nasp")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = nd.init_distributed(args.device)
    try:
        _, result = toy_search(args.out, epochs=args.epochs, batch_size=args.batch_size,
                               checkpoint_every=args.checkpoint_every, device=str(device), strategy=args.strategy)
        if nd.is_main_process():
            print(json.dumps({"world_size": nd.get_world_size(), "genotype": result.genotype.to_dict(),
                              "valid_loss": result.history[-1]["valid_loss"]}))
    finally:
        nd.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
