"""SIF: interaction-function search for collaborative filtering, built on the nasp core."""

from .baselines import BASELINES, create_baseline
from .interactions import INTERACTIONS, PRIMITIVES, tensor_candidates
from .recommender import (
    BaselineRecommender,
    BaseRecommender,
    FixedInteractionRecommender,
    SIFRecommender,
    create_recommender,
    load_recommender,
)
from .space import SIFSpace
from .task import RatingTask

__all__ = ["BASELINES", "INTERACTIONS", "PRIMITIVES", "BaseRecommender", "BaselineRecommender",
           "FixedInteractionRecommender", "RatingTask", "SIFRecommender", "SIFSpace",
           "create_baseline", "create_recommender", "load_recommender", "tensor_candidates"]
