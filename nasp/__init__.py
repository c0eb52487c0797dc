"""NASP: fast neural architecture search by proximal iterations (one search core for every space)."""

from .arch import DENSE, NASP, SPARSE, AlphaSpec, ArchParameters, ArchView
from .genotype import Choice, Genotype, derive, draw
from .mixed import mix
from .prox import prox_c1, prox_c2
from .search import NonFiniteLossError, SearchConfig, Searcher, SearchResult
from .space import SearchSpace, Task, create_space, register_space
from .spaces import toy as _toy  # noqa: F401  (registers the toy space)
from .streams import ResumableStream, TensorLoader

__all__ = ["DENSE", "NASP", "SPARSE", "AlphaSpec", "ArchParameters", "ArchView", "Choice", "Genotype",
           "NonFiniteLossError", "ResumableStream", "SearchConfig", "SearchResult", "SearchSpace", "Searcher", "Task",
           "TensorLoader", "create_space", "derive", "draw", "mix", "prox_c1", "prox_c2", "register_space"]
