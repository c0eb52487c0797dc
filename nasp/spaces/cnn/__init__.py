"""The DARTS / NASP image-cell search space: ops, search network, genotypes, evaluation and ImageNet networks.

Importing this package registers the search space ``"cnn"`` (see :func:`nasp.space.create_space`).
"""

from .ops import NASP_NORMAL_PRIMITIVES, NASP_REDUCE_PRIMITIVES, OP_SETS, OPS, PRIMITIVES
from .supernet import CNNSearchSpace, SearchCell
from .task import ImageClassificationTask

__all__ = ["OPS", "PRIMITIVES", "NASP_NORMAL_PRIMITIVES", "NASP_REDUCE_PRIMITIVES", "OP_SETS", "CNNSearchSpace",
           "SearchCell", "ImageClassificationTask"]
