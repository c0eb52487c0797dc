"""ONE search loop for every search space: NASP (proximal), DARTS first/second order, and random search.

The loop owns epochs, the two optimisers and the weight-lr schedule, the persistent validation stream, the
progress bar, the per-epoch JSONL log, callbacks, atomic checkpoints with exact resume (:mod:`nasp.search_state`),
the genotype of every epoch and the final derivation. The space (an ``nn.Module``, see :mod:`nasp.space`) and the
task adapter (loss of a batch, evaluation) are all it knows of the problem.

Example::

    searcher = Searcher(space, task, SearchConfig(epochs=50, strategy="nasp"), device="cuda", run_dir="runs/a")
    result = searcher.fit(train_loader, valid_loader)
    print(result.genotype)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .arch import onehot_index
from .checkpoint import seed_everything
from .genotype import Genotype, draw
from .loop import HostProbe, PhaseTimer, progress, to_device
from .optim import make_optimizer
from .search_config import FusedStepUnsupported, NonFiniteLossError, SearchConfig, SearchResult
from .search_state import SearchCheckpoints
from .space import SearchSpace, Task
from .strategies import STRATEGIES
from .streams import ResumableStream

__all__ = ["SearchConfig", "Searcher", "SearchResult", "NonFiniteLossError", "FusedStepUnsupported", "to_device"]

log = logging.getLogger("nasp.search")


class Searcher(SearchCheckpoints):
    """Drives a :class:`~nasp.space.SearchSpace` with a :class:`~nasp.space.Task`.

    model: the supernet (owns ``arch``); task: the loss/evaluation adapter; config: :class:`SearchConfig`;
    device: where to run ("cpu", "cuda", ...); run_dir: folder for config, log, checkpoint and genotype
    (None: keep nothing on disk, no resume); callbacks: ``fn(epoch, elapsed_seconds, metrics)``, a True return
    stops the search; w_optimizer: optional factory ``params -> torch.optim.Optimizer`` overriding the config.

    Host syncs: the step functions transfer at most the op selection once per alpha update (see
    :mod:`nasp.strategies`); the loop keeps losses on the device, times phases with CUDA events read at the epoch
    end, and reads the progress-bar loss, architecture and the NaN/inf check every ``log_every`` steps through a
    non-blocking pinned copy (:class:`_HostProbe`), so a non-finite loss is caught at most about two periods late,
    and always before a checkpoint is written (a blocking check at every checkpoint and epoch end).

    ``config.compile``: the task loss (forward + loss of every step) runs through ``torch.compile`` with
    ``config.compile_backend``/``compile_mode``. Meant for CUDA. Each distinct discrete architecture of a SPARSE
    step is its own graph (the selection is a Python constant), so NASP recompiles when the choice changes, up to
    torch._dynamo's recompile limit, after which that call runs eagerly. On a CPU it does not pay: on this
    project's 2-core machine compiling cost minutes and no step got faster (benchmarks/README.md, host syncs).

    ``config.fused`` (NASP only): when the model has a hook ``fused_nasp_step(searcher)`` returning a callable
    ``step(train_batch, valid_batch, update_alpha) -> dict``, every NASP step runs through it instead of the
    generic autograd step (e.g. :class:`sif.fused.FusedSIFStep`: the same results up to float rounding, computed
    by hand). The hook raises :class:`FusedStepUnsupported` for settings it does not cover; then, or without a hook, the
    generic step runs: with ``fused=None`` (the default) silently (logged at INFO), with ``fused=True`` after a
    warning at the start of ``fit``. ``fused=False`` always runs the generic step.
    """

    def __init__(self, model: SearchSpace, task: Task, config: SearchConfig | None = None, device="cpu",
                 run_dir: str | Path | None = None, callbacks: Sequence[Callable] = (), show_progress: bool = True,
                 w_optimizer: Callable | None = None, extra_config: dict | None = None):
        self.config = config or SearchConfig()
        self.device = torch.device(device)
        self.model, self.task = model.to(self.device), task
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks, self.show_progress = list(callbacks), show_progress
        self.extra_config = extra_config or {}
        self._step_fn = STRATEGIES[self.config.strategy]
        self.task_loss = self._make_task_loss()
        self.alpha_params = list(model.alphas())
        self.extra_params = list(model.alpha_step_parameters())
        self.weight_params = list(model.weights())
        self.op_costs = {n: c.to(self.device) for n, c in model.op_costs().items()}
        self.w_opt = w_optimizer(self.weight_params) if w_optimizer else self._make_w_optimizer()
        self.a_opt = make_optimizer("adam", self.alpha_params + self.extra_params, self.config.a_lr,
                                    self.config.a_weight_decay, betas=self.config.a_betas)
        self.scheduler = self._make_scheduler()
        self.arch_generator = torch.Generator().manual_seed(self.config.seed + 7919)
        self.timer = PhaseTimer(self.device)
        self.probe = HostProbe(self.device)
        self.async_finite_check = True      # the data-parallel searcher checks only collectively (same step)
        self.epoch, self.step, self.history = 0, 0, []
        self.elapsed_before = 0.0           # seconds of earlier processes of a resumed search
        self._t_start = time.perf_counter()
        self._epoch_acc: dict[str, Any] = {}
        self.grad_sync: Callable[[list[Tensor]], None] | None = None   # data-parallel hook (nasp.distributed)
        self.fused_step: Callable | None = None     # set by fit() when config.fused and the model provides one

    # ---- construction ------------------------------------------------------------------------------------
    def _make_w_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return make_optimizer(c.w_optimizer, self.weight_params, c.w_lr, c.w_weight_decay, momentum=c.w_momentum)

    def _make_scheduler(self):
        c = self.config
        if c.w_lr_schedule == "constant":
            return None
        return torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, T_max=c.epochs, eta_min=c.w_lr_min)

    def _make_task_loss(self) -> Callable:
        """``task.loss``, through ``torch.compile`` when ``config.compile`` (the loss of every step calls this)."""
        c = self.config
        if not c.compile:
            return self.task.loss
        return torch.compile(self.task.loss, backend=c.compile_backend, mode=c.compile_mode)

    def autocast(self):
        if self.config.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- the loop --------------------------------------------------------------------------------------------
    def fit(self, train_loader: Iterable, valid_loader: Iterable, eval_loader: Iterable | None = None,
            resume: bool = True) -> SearchResult:
        """Search for ``config.epochs`` epochs (continuing a checkpoint in ``run_dir`` when ``resume``)."""
        eval_loader = valid_loader if eval_loader is None else eval_loader
        train_stream, valid_stream = ResumableStream(train_loader), ResumableStream(valid_loader)
        state = self._resume_state() if resume else None
        if state is not None:
            self._check_saved_config(state["config"])
            self.load_state_dict(state, train_stream, valid_stream)
            log.info("resumed from %s at epoch %d step %d", self.checkpoint_path, self.epoch, self.step)
        else:
            seed_everything(self.config.seed)
            self.epoch, self.step, self.history, self.elapsed_before = 0, 0, [], 0.0
            if self.config.init_from:
                self._init_from(self.config.init_from)
        self._write_run_files()
        self.fused_step = self._resolve_fused_step()
        self._t_start = time.perf_counter()
        while self.epoch < self.config.epochs:
            metrics = self._run_epoch(train_stream, valid_stream, eval_loader)
            if any(bool(cb(self.epoch - 1, self.elapsed, metrics)) for cb in self.callbacks):
                log.info("a callback stopped the search after epoch %d", self.epoch - 1)
                break
        return self._finish(self.elapsed)

    @property
    def elapsed(self) -> float:
        """Seconds this search has run, added up over every process of a resumed run."""
        return self.elapsed_before + time.perf_counter() - self._t_start

    def _run_epoch(self, train_stream: ResumableStream, valid_stream: ResumableStream, eval_loader) -> dict:
        c, epoch = self.config, self.epoch
        warm = epoch < c.warmup_epochs
        step_fn = STRATEGIES["random"] if warm else self._step_fn
        acc = self._epoch_acc or {"train_loss": torch.zeros((), device=self.device),
                                  "alpha_loss": torch.zeros((), device=self.device),
                                  "n_train": 0, "n_alpha": 0, "steps": 0, "seconds": 0.0}
        self._epoch_acc = acc
        self.model.train()
        t0 = time.perf_counter()
        loader = train_stream.loader
        total = len(loader) if hasattr(loader, "__len__") else None
        if c.max_steps_per_epoch is not None:
            total = min(total or c.max_steps_per_epoch, c.max_steps_per_epoch)
        bar = progress(total, acc["steps"], f"{c.strategy} epoch {epoch + 1}/{c.epochs}", self.show_progress)
        for batch in train_stream.take_epoch():
            update_alpha = (not warm) and (self.step % c.alpha_every == 0)
            valid_batch = to_device(next(valid_stream), self.device) if update_alpha else None
            out = step_fn(self, to_device(batch, self.device), valid_batch, update_alpha)
            self._accumulate(acc, out)
            self.step += 1
            if bar is not None:
                bar.update(1)
            if acc["steps"] % c.log_every == 0:
                self._probe(acc, epoch, bar)
            if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                acc["seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                self._check_finite(acc, epoch)            # never checkpoint a NaN state
                self._save(train_stream, valid_stream)
            if c.max_steps_per_epoch is not None and acc["steps"] >= c.max_steps_per_epoch:
                break
        if bar is not None:
            bar.close()
        self._check_finite(acc, epoch)
        if train_stream.offset:                 # stopped early by max_steps_per_epoch
            train_stream.epoch, train_stream.offset, train_stream._it = train_stream.epoch + 1, 0, None
        return self._end_epoch(acc, t0, train_stream, valid_stream, eval_loader, warm)

    def _resolve_fused_step(self) -> Callable | None:
        """The model's fused NASP step when ``config.fused`` allows it (True, or None: auto) and it covers these
        settings, else None (with a warning saying why when fused=True was asked for)."""
        if self.config.fused is False:
            return None
        hook = getattr(self.model, "fused_nasp_step", None)
        if self.config.strategy != "nasp":
            reason = f"strategy {self.config.strategy!r} has no fused step (only 'nasp')"
        elif hook is None:
            reason = f"{type(self.model).__name__} has no fused_nasp_step"
        else:
            try:
                return hook(self)
            except FusedStepUnsupported as e:
                reason = f"{type(self.model).__name__}'s fused step does not support {e}"
        if self.config.fused:
            warnings.warn(f"search fused=True ignored: {reason}; using the generic step", stacklevel=3)
        else:
            log.info("generic NASP step: %s", reason)
        return None

    @staticmethod
    def _accumulate(acc: dict, out: dict[str, Tensor]) -> None:
        acc["train_loss"] += out["train_loss"]          # the float32 accumulator casts (no .float() op per step)
        acc["n_train"] += 1
        if "alpha_loss" in out:
            acc["alpha_loss"] += out["alpha_loss"]
            acc["n_alpha"] += 1
        acc["steps"] += 1

    def _probe(self, acc: dict, epoch: int, bar) -> None:
        """Every ``log_every`` steps, without a host sync on CUDA: post the running loss sums (and the current Ā
        selection when a progress bar shows it), then check and show the newest finished read."""
        parts = [torch.stack([acc["train_loss"], acc["alpha_loss"]]).float()]                # (2,)
        if bar is not None:
            parts += [torch.cat([onehot_index(w) for w in self.model.arch.prox_c1().values()]).float()]   # (rows,)
        self.probe.post(torch.cat(parts), tag=acc["n_train"])
        got = self.probe.read()
        if got is None:
            return
        values, n_train = got
        if self.async_finite_check and not all(math.isfinite(v) for v in values[:2]):
            self._raise_non_finite(epoch)
        if bar is not None and len(values) > 2:
            bar.set_postfix_str(self._postfix(values[0] / max(n_train, 1), values[2:]))

    def _postfix(self, loss: float, selected: list[float]) -> str:
        """``loss=... arch=...``: the running train loss and the rows kept by Ā = prox_C1(A) with their ops."""
        arch, start = [], 0
        for n, spec in self.model.arch.specs.items():
            sel = selected[start: start + len(spec.rows)]
            start += len(spec.rows)
            arch.append(f"{n}: " + ", ".join(f"{r}={spec.ops[int(k)]}" for r, k in zip(spec.rows, sel, strict=True)
                                             if k >= 0))
        return f"loss={loss:.4f} arch={'; '.join(arch)}"[:160]

    def _end_epoch(self, acc, t0, train_stream, valid_stream, eval_loader, warm) -> dict[str, Any]:
        phases = self.timer.collect()
        if self.config.strategy == "random":
            with self.timer("pick"):
                self._pick_random_candidate(eval_loader)
        with self.timer("eval"):
            self.model.eval()
            metrics = self.task.evaluate(self.model, eval_loader, self.model.sparse_view())
            self.model.train()
        phases.update(self.timer.collect())
        if self.scheduler is not None:
            self.scheduler.step()
        genotype = self.model.genotype()
        record = {
            "epoch": self.epoch, "step": self.step, "warmup": warm,
            "train_loss": (acc["train_loss"] / max(acc["n_train"], 1)).item(),
            "alpha_loss": (acc["alpha_loss"] / acc["n_alpha"]).item() if acc["n_alpha"] else None,
            **{_metric_key(k): v for k, v in metrics.items()},
            "lr": self.w_opt.param_groups[0]["lr"],
            "seconds_alpha": phases.get("alpha", 0.0), "seconds_weight": phases.get("weight", 0.0),
            "seconds_eval": phases.get("eval", 0.0) + phases.get("pick", 0.0),
            "seconds_epoch": acc["seconds"] + time.perf_counter() - t0,
            "genotype": genotype.to_dict(),
            "alphas": {n: a.detach().cpu().tolist() for n, a in self.model.arch},
        }
        self.history.append(record)
        self.epoch += 1
        self._epoch_acc = {}
        self._save(train_stream, valid_stream)
        self._append_log(record)
        log.info("epoch %d: train_loss=%.4f %s=%s genotype=%s", record["epoch"], record["train_loss"],
                 self.task.metric, metrics.get(self.task.metric), genotype)
        return record

    @torch.no_grad()
    def _pick_random_candidate(self, eval_loader) -> None:
        """Random search: score sampled architectures on validation, keep the best one as A."""
        best, best_view = None, None
        self.model.eval()
        for _ in range(self.config.random_candidates):
            view = self.model.arch.random_view(self.arch_generator)
            score = self.task.evaluate(self.model, eval_loader, view)[self.task.metric]
            key = score if self.task.maximize else -score
            if best is None or key > best:
                best, best_view = key, view
        self.model.train()
        self.model.arch.set_(best_view.weights)

    def _finish(self, seconds: float) -> SearchResult:
        genotype = self.model.genotype()
        metric = _metric_key(self.task.metric)
        scored = [h for h in self.history if h.get(metric) is not None and not h["warmup"]]
        best_epoch, best_geno = len(self.history) - 1, genotype
        if scored:
            sign = 1 if self.task.maximize else -1
            best = max(scored, key=lambda h: (sign * h[metric], -h["epoch"]))
            best_epoch, best_geno = best["epoch"], Genotype.from_dict(best["genotype"])
        if self.run_dir is not None:
            genotype.to_json(self.run_dir / "genotype.json")
            best_geno.to_json(self.run_dir / "best_genotype.json")
            draw(genotype, self.run_dir / "genotype.png", title=self.config.strategy)
        return SearchResult(genotype, best_geno, best_epoch, list(self.history), seconds)

    # ---- run folder ------------------------------------------------------------------------------------------
    def _write_run_files(self) -> None:
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {"search": asdict(self.config), "device": str(self.device),
                    "space": type(self.model).__name__, "arch": repr(self.model.arch), **self.extra_config}
        (self.run_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
        with open(self.run_dir / "log.jsonl", "w") as f:     # rewritten from the checkpoint's history on resume
            for rec in self.history:
                f.write(json.dumps(rec) + "\n")

    def _append_log(self, record: dict) -> None:
        if self.run_dir is not None:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")


def _metric_key(name: str) -> str:
    """Validation metrics are logged as ``valid_<name>``."""
    return name if name.startswith("valid_") else f"valid_{name}"


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)
