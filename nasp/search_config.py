"""The settings and results of the search loop (:class:`nasp.search.Searcher`), and the errors it signals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import check_finite, check_range, config_from_dict
from .genotype import Genotype
from .strategies import STRATEGIES

__all__ = ["SearchConfig", "SearchResult", "NonFiniteLossError", "FusedStepUnsupported"]


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the run stopped and the last good checkpoint was kept."""


class FusedStepUnsupported(Exception):
    """Raised by a space's ``fused_nasp_step`` hook for a setting its fused step does not cover (the message names
    it); the search then runs the generic step (see :class:`Searcher`)."""


@dataclass
class SearchConfig:
    """Settings of the search loop (defaults: the NASP/DARTS CNN recipe of algorithms.md)."""

    strategy: str = "nasp"              # nasp | darts1 | darts2 | random
    epochs: int = 50
    seed: int = 0
    # weight optimiser
    w_optimizer: str = "sgd"            # sgd | adagrad | adam
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_lr_schedule: str = "cosine"       # cosine | constant
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0              # 0 disables
    # alpha optimiser (Adam)
    a_lr: float = 3e-4
    a_betas: tuple[float, float] = (0.5, 0.999)
    a_weight_decay: float = 1e-3
    alpha_init: str | None = None      # None: "darts" for darts*, "nasp" otherwise (used by spaces that ask)
    alpha_every: int = 1                # alpha update every n weight steps
    warmup_epochs: int = 0              # weight-only epochs on random C1 samples before any alpha step
    eta: float = 0.0                    # complexity regulariser weight
    random_candidates: int = 20         # random search: architectures scored on validation per epoch
    max_steps_per_epoch: int | None = None
    log_every: int = 20                 # progress-bar refresh / non-finite check period (sync-free on CUDA)
    checkpoint_every: int = 0           # also checkpoint every n steps inside an epoch (0: epoch ends only)
    amp: str | None = None              # None | "bf16"
    compile: bool = False               # torch.compile the task loss (for CUDA; see Searcher)
    compile_backend: str = "inductor"   # torch.compile backend ("eager" / "aot_eager" only trace: for tests)
    compile_mode: str | None = None     # torch.compile mode, e.g. "max-autotune" (None: the default)
    fused: bool | None = None           # nasp: the space's hand-fused step (None: when it has one; see Searcher)
    init_from: str | None = None        # a search checkpoint.pt: start a new search from its weights and alphas
    #                                     (e.g. the last good state of a run that diverged, with new settings)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        if self.w_optimizer not in ("sgd", "adagrad", "adam"):
            raise ValueError(f"w_optimizer must be sgd, adagrad or adam, got {self.w_optimizer!r}")
        if self.w_lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"w_lr_schedule must be cosine or constant, got {self.w_lr_schedule!r}")
        if self.amp not in (None, "bf16"):
            raise ValueError(f"amp must be None or 'bf16', got {self.amp!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if self.fused is not None and not isinstance(self.fused, bool):
            raise ValueError(f"fused must be true, false or null (auto), got {self.fused!r}")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ValueError(f"compile_backend must be a backend name, got {self.compile_backend!r}")
        check_finite(self)                  # every float setting: no NaN or inf
        for name in ("epochs", "alpha_every", "log_every", "random_candidates"):
            check_range(self, name, 1)
        check_range(self, "max_steps_per_epoch", 1, nullable=True, hint=" (all)")
        for name in ("w_lr", "a_lr"):
            check_range(self, name, 0, low_open=True)
        for name in ("w_lr_min", "grad_clip", "warmup_epochs", "w_momentum", "w_weight_decay", "a_weight_decay", "eta",
                     "checkpoint_every"):
            check_range(self, name, 0)
        if len(self.a_betas) != 2 or not all(0 <= b < 1 for b in self.a_betas):
            raise ValueError(f"a_betas must be two numbers in [0, 1), got {list(self.a_betas)}")
        self.a_betas = tuple(self.a_betas)

    @property
    def resolved_alpha_init(self) -> str:
        if self.alpha_init is not None:
            return self.alpha_init
        return "darts" if self.strategy.startswith("darts") else "nasp"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        return config_from_dict(cls, d)


@dataclass
class SearchResult:
    """What a search returns: the final genotype (last prox_C1), the epoch best on the validation metric and
    its genotype, and the per-epoch history (the JSONL log as dicts)."""

    genotype: Genotype
    best_genotype: Genotype
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
