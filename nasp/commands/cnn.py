"""``nasp cnn search`` and ``nasp cnn train``: the DARTS/NASP image-cell space, configured by the dataclasses
below through :mod:`nasp.config` (defaults, a YAML file, ``--set key=value ...``)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..checkpoint import seed_everything
from ..config import load, to_dict
from ..search import SearchConfig, Searcher
from ..train.image import TrainConfig, train_classifier
from . import CommandRun, genotype_error
from .runs import digest, prepare_run_dir

__all__ = ["ImageDataConfig", "CNNSpaceConfig", "CNNModelConfig", "CNNSearchRun", "CNNTrainRun",
           "resolve_config", "run_search", "run_train", "load_data", "EAGER_MEMORY_SHARE"]

log = logging.getLogger("nasp.commands.cnn")

# data.lazy=auto reads an image folder into memory when its decoded images (N x 3 x size x size bytes) take at most
# this share of the machine's physical memory, else lazily (decoded per batch). A quarter, because reading stacks
# the decoded images into a second copy, the search indexes a copy of each half, and the model, the other split and
# the batches need room too; ImageNet at 224 px (1.28M images, 193 GB decoded) is thus lazy on any machine, a
# CIFAR-sized folder (50k images at 32 px, 154 MB) in memory on any.
EAGER_MEMORY_SHARE = 0.25
FALLBACK_MEMORY = 16 * 2**30        # where the OS does not say how much memory the machine has


@dataclass
class ImageDataConfig:
    """Image data of ``nasp cnn``: a CIFAR pickle folder, an image folder or a zip."""

    source: str = "cifar10"         # cifar10 | cifar100 | zip | folder
    path: str = ""                  # relative paths are also looked up under $NASP_DATA_DIR
    test_path: str = ""             # zip/folder: the test images (default: path)
    num_classes: int = 10
    subset: int = 0                 # > 0: a seeded random subset of the training images
    batch_size: int = 64
    cutout: int = 0
    train_fraction: float = 0.5     # search: share of the training images for the weight steps (rest: alpha)
    image_size: int = 32
    lazy: bool | str = "auto"       # folder source: decode images per batch (true), all up front (false), or auto:
    #                                 up front when they fit EAGER_MEMORY_SHARE of the memory (zip/cifar: up front)

    def __post_init__(self):
        if self.source not in ("cifar10", "cifar100", "zip", "folder"):
            raise ValueError(f"source must be cifar10, cifar100, zip or folder, got {self.source!r}")
        if self.batch_size < 1 or self.num_classes < 2 or self.image_size < 1:
            raise ValueError("batch_size and image_size must be >= 1 and num_classes >= 2")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.subset < 0 or self.cutout < 0:
            raise ValueError(f"subset and cutout must be >= 0, got subset={self.subset}, cutout={self.cutout}")
        if self.cutout >= self.image_size:        # a square this large can cover every pixel of every image
            raise ValueError(f"cutout ({self.cutout}) must be smaller than image_size ({self.image_size})")
        if self.lazy not in (True, False, "auto"):
            raise ValueError(f"lazy must be auto, true or false, got {self.lazy!r}")
        if self.lazy is True and self.source != "folder":
            raise ValueError(f"lazy must be auto or false for source {self.source} (only image folders, source: "
                             "folder, are read lazily), got true")


@dataclass
class CNNSpaceConfig:
    """The search network (DARTS: 8 cells, C=16, 4 nodes)."""

    C: int = 16
    layers: int = 8
    steps: int = 4
    multiplier: int = 4
    op_set: str = "darts"           # darts | nasp12
    derive_rule: str = "prox"
    alpha_subbatch: int = 0         # > 0: the alpha step's unselected ops on this many rows of the batch

    def __post_init__(self):
        if min(self.C, self.layers, self.steps, self.multiplier) < 1:
            raise ValueError("C, layers, steps and multiplier must be >= 1")


@dataclass
class CNNModelConfig:
    """The evaluation network of ``nasp cnn train``."""

    network: str = "cifar"          # cifar | imagenet
    genotype: str = "DARTS_V2"      # a published genotype's name or a genotype JSON file
    C: int = 36
    layers: int = 20
    auxiliary: bool = True

    def __post_init__(self):
        if self.network not in ("cifar", "imagenet"):
            raise ValueError(f"network must be 'cifar' or 'imagenet', got {self.network!r}")
        if min(self.C, self.layers) < 1:
            raise ValueError(f"C and layers must be >= 1, got C={self.C}, layers={self.layers}")


@dataclass
class CNNSearchRun(CommandRun):
    """``nasp cnn search``; ``seed`` drives everything (data split, subset, loaders, alphas, weights)."""

    channels_last: bool = False
    run_dir: str = "runs/cnn_search"
    eval_batches: int = 0           # > 0: validation on this many batches per epoch
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    space: CNNSpaceConfig = field(default_factory=CNNSpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    __derived__: ClassVar[dict[str, str]] = {"search.seed": "seed"}


@dataclass
class CNNTrainRun(CommandRun):
    """``nasp cnn train``: a genotype trained stand-alone (defaults: DARTS' CIFAR-10 evaluation)."""

    run_dir: str = "runs/cnn_train"
    data: ImageDataConfig = field(default_factory=lambda: ImageDataConfig(batch_size=96, cutout=16))
    model: CNNModelConfig = field(default_factory=CNNModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    __derived__: ClassVar[dict[str, str]] = {"train.seed": "seed"}


# ---- configuration ---------------------------------------------------------------------------------------------
def resolve_config(cls: type, config_file: str | Path | None = None, overrides: list[str] = ()):
    """``cls`` (CNNSearchRun or CNNTrainRun) <- YAML file <- ``key.sub=value`` overrides (:func:`nasp.config.load`)."""
    return load(cls, config_file, overrides)


# ---- data -----------------------------------------------------------------------------------------------------
def _resolve_path(p: str) -> Path:
    path = Path(p).expanduser()
    if not path.exists() and os.environ.get("NASP_DATA_DIR"):
        path = Path(os.environ["NASP_DATA_DIR"], p)
    if not path.exists():
        raise FileNotFoundError(f"data path {p!r} not found (also looked under NASP_DATA_DIR)")
    return path


def load_data(d: ImageDataConfig, split: str, seed: int = 0):
    """An ImageSet for ``split`` ("train" or "test") of the configured source (``seed`` draws the subset), or for a
    folder that ``data.lazy`` reads lazily a LazyImageSet (the same images, labels and classes, decoded when
    indexed)."""
    from data_loaders.images import image_files, load_cifar, load_image_folder, load_image_zip

    if d.source in ("cifar10", "cifar100"):
        data = load_cifar(_resolve_path(d.path), d.source, split)
    else:
        path = _resolve_path(d.path if split == "train" else (d.test_path or d.path))
        is_zip = path.is_file() and path.suffix == ".zip"
        has_split = _zip_has_folder(path, split) if is_zip else (path / split).is_dir()
        if split == "test" and not d.test_path and not has_split:
            raise ValueError(f"data.path {d.path} has no test/ folder and data.test_path is not set, so the test "
                             f"images would be the training images; set data.test_path to the test images "
                             f"({_split_folders(path, is_zip)})")
        if is_zip:                                         # a zip with train/ and test/ folders: only this split
            data = load_image_zip(path, split=split if has_split else None, size=d.image_size)
        elif path.is_file():
            data = load_image_folder(path, size=d.image_size)
        else:
            data = image_files(path / split if has_split else path, size=d.image_size)
            data = data if _read_lazily(d, data, split) else data.load()
    if len(data.classes) > d.num_classes:
        raise ValueError(f"data.num_classes is {d.num_classes} but the {split} images have {len(data.classes)} "
                         f"classes; set data.num_classes={len(data.classes)}")
    if d.subset and split == "train" and d.subset < len(data):
        g = torch.Generator().manual_seed(seed)
        data = data.subset(torch.randperm(len(data), generator=g)[: d.subset])
    return data


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):       # not a POSIX system that reports it
        return FALLBACK_MEMORY


def _read_lazily(d: ImageDataConfig, files, split: str) -> bool:
    """``data.lazy``, or for auto whether the decoded images exceed :data:`EAGER_MEMORY_SHARE` of the memory."""
    if d.lazy != "auto":
        return bool(d.lazy)
    need, have = files.decoded_bytes(), _physical_memory()
    lazy = need > EAGER_MEMORY_SHARE * have
    log.info("data.lazy=auto: the %s images take %.2f GB decoded, %s %.0f%% of %.1f GB memory: read %s", split,
             need / 1e9, "over" if lazy else "within", 100 * EAGER_MEMORY_SHARE, have / 1e9,
             "lazily (per batch)" if lazy else "into memory")
    return lazy


def _loader(data, batch_size: int, **kw):
    """An ImageLoader over an in-memory ImageSet or a LazyImageSet (same batches for the same images)."""
    from data_loaders.images import ImageLoader, LazyImageSet

    if isinstance(data, LazyImageSet):
        return ImageLoader(data, None, batch_size, **kw)
    return ImageLoader(data.images, data.labels, batch_size, **kw)


def _split_folders(path: Path, is_zip: bool) -> str:
    """The folders at the top of a zip or folder, for an error message."""
    import zipfile

    if is_zip:
        with zipfile.ZipFile(path) as z:
            names = sorted({n.split("/")[0] for n in z.namelist() if "/" in n})
    else:
        names = sorted(p.name for p in path.iterdir() if p.is_dir())
    return f"folders found: {', '.join(names[:8])}" if names else "it holds no folders"


def _zip_has_folder(path: Path, name: str) -> bool:
    """Whether some member of the zip at ``path`` lies under a top-level (or second-level) folder ``name``."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        return any(name in n.split("/")[:-1][:2] for n in z.namelist())


def _enough(n: int, batch_size: int, what: str) -> None:
    """The training loaders drop a last partial batch: fewer images than one batch would train on nothing."""
    if n < batch_size:
        raise ValueError(f"{what}: {n} images, fewer than data.batch_size={batch_size}, so no full batch would be "
                         "trained on; lower data.batch_size or add images")


def _digest(data) -> str:
    """sha256 of an ImageSet (images, labels, class names), for the run folder's fingerprint; of a LazyImageSet
    the files' names, sizes and modification times instead of the pixels (decoding ImageNet at every start would
    take longer than an epoch)."""
    from data_loaders.images import LazyImageSet

    pixels = data.stats() if isinstance(data, LazyImageSet) else data.images
    return digest(pixels, data.labels, list(data.classes))


def _stats(source: str):
    from data_loaders import augment as A

    return (A.CIFAR100_MEAN, A.CIFAR100_STD) if source == "cifar100" else (A.CIFAR10_MEAN, A.CIFAR10_STD)


# ---- commands -----------------------------------------------------------------------------------------------------
def run_search(cfg: CNNSearchRun, show_progress: bool = True) -> dict:
    """Search a cell with the configured strategy; writes genotype JSON + pictures into run_dir."""
    from data_loaders.augment import Augment
    from data_loaders.images import search_split

    from ..spaces.cnn import CNNSearchSpace, ImageClassificationTask
    from ..spaces.cnn.genotypes import draw, from_core

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d, sp, run_dir = cfg.data, cfg.space, Path(cfg.run_dir)
    data = load_data(d, "train", cfg.seed)
    tr, va = search_split(len(data), cfg.seed, d.train_fraction)
    _enough(len(tr), d.batch_size, "the search split's weight-step part (data.train_fraction)")
    _enough(len(va), d.batch_size, "the search split's alpha-step part (1 - data.train_fraction)")
    prepare_run_dir(run_dir, "cnn search", cfg, {"train": _digest(data)})
    mean, std = _stats(d.source)
    train = _loader(data.subset(tr), d.batch_size, augment=Augment(mean, std, cutout=d.cutout), seed=cfg.seed,
                    drop_last=True)
    valid = _loader(data.subset(va), d.batch_size, augment=Augment(mean, std, train=False), seed=cfg.seed + 1,
                    drop_last=True)
    scfg = cfg.search
    seed_everything(cfg.seed)       # the supernet's weights (its alphas take seed themselves)
    space = CNNSearchSpace(C=sp.C, num_classes=d.num_classes, layers=sp.layers, steps=sp.steps,
                           multiplier=sp.multiplier, op_set=sp.op_set, alpha_init=scfg.resolved_alpha_init,
                           seed=cfg.seed, derive_rule=sp.derive_rule, alpha_subbatch=sp.alpha_subbatch or None)
    if cfg.channels_last:
        space = space.to(memory_format=torch.channels_last)
    task = ImageClassificationTask(channels_last=cfg.channels_last, max_eval_batches=cfg.eval_batches or None)
    searcher = Searcher(space, task, scfg, device=cfg.device, run_dir=run_dir, show_progress=show_progress,
                        extra_config={"cli": to_dict(cfg)})
    result = searcher.fit(train, valid)
    cell = from_core(result.genotype, sp.steps)
    cell.to_json(run_dir / "cell_genotype.json")
    best = from_core(result.best_genotype, sp.steps)
    best.to_json(run_dir / "best_cell_genotype.json")
    pictures = draw(cell, run_dir / "cell")
    summary = {"genotype": cell.to_dict(), "best_genotype": best.to_dict(), "best_epoch": result.best_epoch,
               "valid_accuracy": [h.get("valid_accuracy") for h in result.history],
               "seconds": result.seconds, "pictures": [str(p) for p in pictures]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_train(cfg: CNNTrainRun, show_progress: bool = True) -> dict:
    """Train a genotype stand-alone, evaluate on the test split, report parameters and multiply-adds (checkpoint
    run_dir/train_checkpoint.pt after every epoch: a rerun resumes; per-epoch log train_log.jsonl)."""
    from data_loaders.augment import IMAGENET_MEAN, IMAGENET_STD, Augment

    from ..spaces.cnn.genotypes import draw, get_genotype
    from ..spaces.cnn.model import NetworkCIFAR, NetworkImageNet

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d, m, run_dir = cfg.data, cfg.model, Path(cfg.run_dir)
    try:
        genotype = get_genotype(m.genotype)
    except ValueError as e:       # not JSON, unknown op, wrong keys: name the setting and the file
        raise genotype_error(m.genotype, e, "nasp cnn search writes the cell to cell_genotype.json") from None
    seed_everything(cfg.seed)       # the initial weights: drawn from seed (they came from whatever state the
    #                                 process's global generator was in, so a second run in one process differed)
    if m.network == "cifar":
        net = NetworkCIFAR(genotype, m.C, d.num_classes, m.layers, m.auxiliary)
        mean, std = _stats(d.source)
    else:
        net = NetworkImageNet(genotype, m.C, d.num_classes, m.layers, m.auxiliary)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    train_set, test_set = load_data(d, "train", cfg.seed), load_data(d, "test")
    test_set = test_set.aligned_to(train_set.classes, f"test images ({d.test_path or d.path})")   # same label ids
    _enough(len(train_set), d.batch_size, "the training images")
    prepare_run_dir(run_dir, "cnn train", cfg, {"train": _digest(train_set), "test": _digest(test_set)})
    train = _loader(train_set, d.batch_size, augment=Augment(mean, std, cutout=d.cutout), seed=cfg.seed,
                    drop_last=True)
    test = _loader(test_set, d.batch_size, shuffle=False, augment=Augment(mean, std, train=False))
    tcfg = cfg.train
    size = train_set.image_shape
    result = train_classifier(net, train, test, tcfg, device=cfg.device, run_dir=run_dir, input_size=size,
                              show_progress=show_progress)
    pictures = draw(genotype, run_dir / "cell")
    summary = {"test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
               "parameters": result.parameters, "multiply_adds": result.multiply_adds,
               "seconds": result.seconds, "history": result.history, "pictures": [str(p) for p in pictures]}
    (run_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


