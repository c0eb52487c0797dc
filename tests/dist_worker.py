"""Worker of tests/test_distributed.py: a short toy-space search and a short SIF search (search + stand-alone
training), in one process or as one rank of a torchrun group; writes ``<out>/result_<rank>.json``.

    PYTHONPATH=. torchrun --standalone --nproc_per_node=2 tests/dist_worker.py --out DIR [--jobs toy,sif,mismatch]
        [--kill-at-step N --marker PATH]

Jobs: toy, darts2, sif, sif_sparse (row-wise tables: sparse sync), sif_ensemble (the race's ensemble, refit),
mismatch (rank 1 nudges an alpha; the check must raise everywhere), cli (``sif search``).
``--kill-at-step``: rank 1 calls ``os._exit`` once at that global search step of the toy search (when ``--marker``
does not exist yet; it creates it first), so that torchrun's ``--max-restarts`` restarts the group.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
from pathlib import Path

import torch

from nasp import distributed as nd
from nasp.spaces.toy_distributed import toy_search

TOY = dict(epochs=3, n_train=512, n_valid=256, batch_size=64, checkpoint_every=4)


def run_toy(run_dir, kill_at_step: int | None = None, marker: str | None = None) -> dict:
    seen: dict[str, int] = {}

    def hook(searcher):
        step_fn = searcher._step_fn

        def step(s, *args):
            seen.setdefault("first_step", s.step)
            if (kill_at_step is not None and s.step == kill_at_step and nd.get_rank() == 1
                    and not Path(marker).exists()):
                Path(marker).write_text(f"killed at step {s.step}\n")
                os._exit(17)
            return step_fn(s, *args)

        searcher._step_fn = step

    searcher, result = toy_search(run_dir, before_fit=hook, **TOY)
    return {"genotype": result.genotype.to_dict(), "best_genotype": result.best_genotype.to_dict(),
            "alphas": {n: a.detach().tolist() for n, a in searcher.model.arch},
            "train_loss": [h["train_loss"] for h in result.history],
            "valid_loss": [h["valid_loss"] for h in result.history],
            "first_step": seen.get("first_step"), "steps": searcher.step}


def run_darts2(run_dir) -> dict:
    """One epoch of second-order DARTS on the toy space (its virtual step and finite differences are averaged)."""
    searcher, result = toy_search(run_dir, epochs=1, n_train=256, strategy="darts2")
    return {"genotype": result.genotype.to_dict(),
            "alphas": {n: a.detach().tolist() for n, a in searcher.model.arch}}


def sif_data():
    from data_loaders import random_split
    from sif.synthetic import planted_ratings

    ds = planted_ratings("multiply", num_users=40, num_items=50, n=1600, seed=0)
    train, valid, _ = random_split(ds, (0.8, 0.2, 0.0), seed=0)          # 1280 train rows: 10 batches of 128
    return train, valid


def run_sif(run_dir, sparse_rows: bool = False) -> dict:
    """SIF search + stand-alone training; ``sparse_rows``: row-wise tables, whose gradients travel as (index, row)
    pairs (the sparse collective's calls and the most rows one of them carried are recorded)."""
    from nasp import distributed_sparse
    from sif.recommender import SIFRecommender

    seen = {"calls": 0, "max_rows": 0}
    inner = nd.allreduce_sparse_mean_

    def spy(tensors):
        seen["calls"] += 1
        seen["max_rows"] = max([seen["max_rows"], *(t.coalesce()._nnz() for t in tensors)])
        assert all(t.is_sparse for t in tensors)
        inner(tensors)

    nd.allreduce_sparse_mean_ = spy
    train, valid = sif_data()
    rec = SIFRecommender(embedding_dim=4, reg=0.0, search={"epochs": 2}, random_state=0, sparse_rows=sparse_rows,
                         train={"max_epochs": 2, "batch_size": 128, "optimizer": "adagrad", "lr": 0.05}
                         if sparse_rows else {"max_epochs": 2, "batch_size": 128})
    try:
        rec.fit(train, valid, show_progress=False, run_dir=run_dir)
    finally:
        nd.allreduce_sparse_mean_ = distributed_sparse.allreduce_sparse_mean_
    weights = torch.cat([p.detach().reshape(-1) for p in rec.model_.parameters()])
    return {"genotype": rec.genotype_.to_dict(), "op": rec.op_, "sparse_sync": seen,
            "alphas": rec.search_result_.history[-1]["alphas"],
            "search_train_loss": [h["train_loss"] for h in rec.search_result_.history],
            "valid_rmse": rec.train_result_.best_valid["rmse"], "weights": weights.tolist()}


def run_sif_ensemble(run_dir) -> dict:
    """SIF search, race and the race's ensemble with refit (the planted data of tests/test_sif_ensemble.py, on
    which the ensemble has two members): the members each rank chose and the refit weights."""
    from data_loaders import random_split
    from sif.recommender import SIFRecommender
    from sif.synthetic import planted_ratings

    ds = planted_ratings("multiply", num_users=80, num_items=100, dim=4, n=3000, noise=0.3, seed=2)
    train, valid, _ = random_split(ds, (0.8, 0.1, 0.1), seed=2)
    rec = SIFRecommender(ops=["plus", "multiply", "max", "min"], search={"epochs": 2}, embedding_dim=4, random_state=0,
                         refit=True, train={"max_epochs": 15, "patience": 3, "batch_size": 256})
    rec.fit(train, valid, show_progress=False, run_dir=run_dir)
    weights = torch.cat([p.detach().reshape(-1) for p in rec.model_.parameters()])
    return {"ensemble": rec.ensemble_, "weights": weights.tolist()}


def run_mismatch() -> dict:
    """Rank 1 nudges one alpha by one ulp; the checksum check must fail on every rank."""
    from nasp.spaces.toy import ToySpace

    space = ToySpace(seed=0)
    nd.check_alphas_identical(space.arch, "(identical)")                 # must pass
    if nd.get_rank() == 1:
        with torch.no_grad():
            a = space.arch.alphas["edges"]
            a[0, 0] = torch.nextafter(a[0, 0], torch.tensor(2.0))
    try:
        nd.check_alphas_identical(space.arch, "(after the nudge)")
    except nd.AlphaMismatchError as e:
        return {"raised": True, "message": str(e)}
    return {"raised": False, "message": ""}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--jobs", default="toy,sif")
    p.add_argument("--kill-at-step", type=int, default=None)
    p.add_argument("--marker", default=None)
    p.add_argument("--cli-config", default=None, help="job 'cli': run `sif search --config` (last: it ends the group)")
    p.add_argument("--watchdog", type=float, default=0, help="dump stacks and exit after this many seconds")
    args = p.parse_args(argv)
    if args.watchdog:
        faulthandler.dump_traceback_later(args.watchdog, exit=True)
    torch.set_num_threads(1)
    nd.init_distributed("cpu")
    out = Path(args.out)
    try:
        result = {"world_size": nd.get_world_size(), "rank": nd.get_rank(),
                  "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))}
        jobs = args.jobs.split(",")
        if "toy" in jobs:
            result["toy"] = run_toy(out / "toy", args.kill_at_step, args.marker)
        if "darts2" in jobs:
            result["darts2"] = run_darts2(out / "darts2")
        if "sif" in jobs:
            result["sif"] = run_sif(out / "sif")
        if "sif_sparse" in jobs:
            result["sif_sparse"] = run_sif(out / "sif_sparse", sparse_rows=True)
        if "sif_ensemble" in jobs:
            result["sif_ensemble"] = run_sif_ensemble(out / "sif_ensemble")
        if "mismatch" in jobs:
            result["mismatch"] = run_mismatch()
        (out / f"result_{nd.get_rank()}.json").write_text(json.dumps(result))
        if "cli" in jobs:                     # the torchrun -m sif.cli path; sif.cli.main leaves the group itself
            from sif.cli import main as sif_main

            rank = nd.get_rank()
            code = sif_main(["search", "--config", args.cli_config, "--out", str(out / "cli")])
            (out / f"cli_rc_{rank}.txt").write_text(str(code))
    finally:
        nd.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
