"""The DARTS recurrent cell as a nasp search space, its evaluation language model and the task adapter.

Importing this package registers the space ``"darts_rnn"`` (see :func:`nasp.space.create_space`).
"""

from .cell import ACTIVATIONS, LanguageModelShell, RecurrentCell
from .genotypes import (
    DARTS_V1,
    DARTS_V2,
    GENOTYPES,
    PRIMITIVES_DARTS,
    PRIMITIVES_NASP,
    RNNGenotype,
    row_index,
    row_pairs,
)
from .model import RNNModel, RNNSearchSpace, derive_rnn, expected_num_params
from .task import LanguageModelTask

__all__ = ["ACTIVATIONS", "LanguageModelShell", "RecurrentCell", "DARTS_V1", "DARTS_V2", "GENOTYPES",
           "PRIMITIVES_DARTS", "PRIMITIVES_NASP", "RNNGenotype", "row_index", "row_pairs", "RNNModel",
           "RNNSearchSpace", "derive_rnn", "expected_num_params", "LanguageModelTask"]
