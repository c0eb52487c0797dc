"""Rating data for recommender experiments: readers, dataset, splits, batching and optional download.

This package depends on nothing in ``nasp`` or ``sif``.
"""

from ._format import ROLE_ALIASES, RatingScale
from .batching import BatchIterator, to_csr
from .download import (
    DEFAULT_BASE_URL,
    KNOWN_CHECKSUMS,
    ChecksumError,
    DownloadError,
    default_cache_dir,
    download_movielens,
    verify_checksum,
)
from .ratings import RatingDataset, load_movielens, read_ratings_file
from .splits import (
    RatingScaler,
    kfold_split,
    leave_k_out_split,
    movielens_fold,
    random_split,
    time_split,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "KNOWN_CHECKSUMS",
    "ROLE_ALIASES",
    "BatchIterator",
    "ChecksumError",
    "DownloadError",
    "RatingDataset",
    "RatingScale",
    "RatingScaler",
    "default_cache_dir",
    "download_movielens",
    "kfold_split",
    "leave_k_out_split",
    "load_movielens",
    "movielens_fold",
    "random_split",
    "read_ratings_file",
    "time_split",
    "to_csr",
    "verify_checksum",
]
