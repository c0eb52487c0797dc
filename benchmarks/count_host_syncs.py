"""Count the device->host reads of one search step, per space and strategy (the host syncs a GPU step pays).

    python benchmarks/count_host_syncs.py                     # toy, SIF and a tiny CNN space, every strategy

A read is any ``tolist``/``item``/``bool``/``int``/``float``/``numpy``/``cpu`` of a tensor made inside the step
function (``nasp.strategies``), counted by wrapping those ``torch.Tensor`` methods. Left out, because they are host
memory on every device: ``torch.optim`` step counters and reads inside ``ArchParameters.random_view`` (its draw is
made on the CPU; ``--count-random-draw`` counts them too, e.g. to measure code from before the draw stayed there).
Runs on the CPU, where the reads are free; the counts are what a CUDA step synchronises on.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasp.search import SearchConfig, Searcher  # noqa: E402
from nasp.spaces.toy import ToySpace, ToyTask, make_toy_data, random_planted  # noqa: E402
from nasp.strategies import STRATEGIES  # noqa: E402
from nasp.streams import TensorLoader  # noqa: E402

READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")


def _toy(strategy):
    planted = random_planted(3, 2, 0)
    x, y = make_toy_data(256, planted, seed=0, teacher_seed=0)
    xv, yv = make_toy_data(256, planted, seed=1000, teacher_seed=0)
    space = ToySpace(seed=0, alpha_init="darts" if strategy.startswith("darts") else "nasp")
    return space, ToyTask(), TensorLoader(x, y, batch_size=32, seed=0), TensorLoader(xv, yv, batch_size=32, seed=1)


def _sif(strategy):
    from sif.space import SIFSpace
    from sif.task import RatingTask

    g = torch.Generator().manual_seed(0)
    u, i, y = torch.randint(30, (512,), generator=g), torch.randint(40, (512,), generator=g), torch.randn(512)
    space = SIFSpace(30, 40, embedding_dim=4, use_bias=True, g_skip=True, seed=0,
                     alpha_init="darts" if strategy.startswith("darts") else "nasp")
    return (space, RatingTask(train_all_heads=True), TensorLoader(u, i, y, batch_size=64, seed=0),
            TensorLoader(u, i, y, batch_size=64, seed=1))


def _cnn(strategy):
    from nasp.spaces.cnn.supernet import CNNSearchSpace
    from nasp.spaces.cnn.task import ImageClassificationTask

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8, generator=g), torch.randint(10, (64,), generator=g)
    space = CNNSearchSpace(C=4, layers=2, steps=2, multiplier=2, stem_multiplier=1, seed=0,
                           alpha_init="darts" if strategy.startswith("darts") else "nasp")
    return (space, ImageClassificationTask(), TensorLoader(x, y, batch_size=16, seed=0),
            TensorLoader(x, y, batch_size=16, seed=1))


SPACES = {"toy": _toy, "sif": _sif, "cnn": _cnn}


def count(space_name: str, strategy: str, alpha_every: int, steps: int, count_random_draw: bool) -> list[int]:
    """Host reads inside each of ``steps`` consecutive steps of one epoch."""
    space, task, train, valid = SPACES[space_name](strategy)
    cfg = SearchConfig(strategy=strategy, epochs=1, seed=0, alpha_every=alpha_every, max_steps_per_epoch=steps,
                       log_every=10_000, w_optimizer="adam" if space_name == "sif" else "sgd")
    s = Searcher(space, task, cfg, show_progress=False)
    calls, per_step = [], []

    def counters():
        return {id(st["step"]) for opt in (s.w_opt, s.a_opt) for st in opt.state.values() if "step" in st}

    def wrap(name, orig):
        def read(self, *args, **kwargs):
            stack = traceback.extract_stack(limit=12)[:-1]
            if id(self) not in counters() and (count_random_draw or all(f.name != "random_view" for f in stack)):
                calls.append(name)
            return orig(self, *args, **kwargs)
        return read

    step_fn = STRATEGIES[strategy]

    def step(*args):
        calls.clear()
        out = step_fn(*args)
        per_step.append(len(calls))
        return out

    originals = {n: getattr(torch.Tensor, n) for n in READS}
    s._step_fn = step
    try:
        for n in READS:
            setattr(torch.Tensor, n, wrap(n, originals[n]))
        s.fit(train, valid)
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)
    return per_step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--count-random-draw", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for space in SPACES:
        for strategy, every in (("nasp", 1), ("nasp", 3), ("darts1", 1), ("darts2", 1), ("random", 1)):
            per = count(space, strategy, every, args.steps, args.count_random_draw)
            rows.append({"space": space, "strategy": strategy, "alpha_every": every, "reads_per_step": per})
            print(json.dumps(rows[-1]), flush=True)
    try:
        from benchmarks._machine import machine
        print(json.dumps({"machine": machine()}))
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
