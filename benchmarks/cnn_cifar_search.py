"""A short real-data NASP search on CPU and a brief stand-alone training of the found cell.

Data: the CIFAR-10 JPEG subset in the shared data folder (NASP_DATA_DIR; 1,000 training images per class,
the 10,000 test images), read with Pillow. Search: a random ``--subset`` of the training images split 50/50,
a small supernet, a few epochs; validation accuracy of the discrete architecture (last prox_C1) per epoch.
Then the found cell is trained stand-alone on all 10,000 training images and tested on the 10,000 test images.
Everything lands in ``--out`` (resolved configs, logs, genotype JSON, cell pictures, summary.json).

    NASP_DATA_DIR=/work/shared/data PYTHONPATH=. python benchmarks/cnn_cifar_search.py --out benchmarks/results/cnn_jpeg

``--train-only`` skips the search and trains the cell of an earlier search in ``--out/search`` (its
summary.json and cell_genotype.json); the training resumes from ``--out/train/checkpoint.pt`` when one exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nasp.cli import CNNSearchRun, CNNTrainRun, resolve_config, run_search, run_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cnn_jpeg")
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-epochs", type=int, default=3)
    p.add_argument("--train-C", type=int, default=12)
    p.add_argument("--train-layers", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--strategy", default="nasp")
    p.add_argument("--train-only", action="store_true", help="reuse the search in --out/search; train only")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    search_cfg = resolve_config(CNNSearchRun, ROOT / "configs/cnn_search_cifar10_jpeg_cpu.yaml", [
        f"data.subset={args.subset}", f"search.epochs={args.epochs}", f"search.strategy={args.strategy}",
        f"threads={args.threads}", "channels_last=true", f"run_dir={args.out / 'search'}"])
    if args.train_only:
        search = json.loads((args.out / "search" / "summary.json").read_text())
    else:
        search = run_search(search_cfg, show_progress=False)
    t1 = time.perf_counter()
    train_cfg = resolve_config(CNNTrainRun, None, [
        "data.source=zip", "data.path=cifar10-jpeg-yoongikim/train_first1000perclass.zip",
        "data.test_path=cifar10-jpeg-yoongikim/test_10000.zip", "data.batch_size=64", "data.cutout=0",
        f"model.genotype={args.out / 'search' / 'cell_genotype.json'}", f"model.C={args.train_C}",
        f"model.layers={args.train_layers}", "model.auxiliary=false", f"train.epochs={args.train_epochs}",
        "train.lr=0.05", "train.drop_path=0.0", "train.channels_last=true",
        f"threads={args.threads}", f"run_dir={args.out / 'train'}"])
    train = run_train(train_cfg, show_progress=False)
    summary = {
        "search": {"valid_accuracy_per_epoch": search["valid_accuracy"], "genotype": search["genotype"],
                   "seconds": round(search["seconds"] if args.train_only else t1 - t0, 1), "config": search_cfg},
        "train": {"test_accuracy_per_epoch": [h["test_accuracy"] for h in train["history"]],
                  "test_accuracy": train["test_accuracy"], "parameters": train["parameters"],
                  "multiply_adds": train["multiply_adds"], "seconds": round(train["seconds"], 1)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "config"} for k, v in summary.items()}, indent=2))
    return summary


if __name__ == "__main__":
    main()
