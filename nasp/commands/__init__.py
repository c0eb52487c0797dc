"""The command lines of the nasp spaces: one module per space (``nasp cnn ...``, ``nasp rnn ...``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..device import check_device


def check_threads(threads: int) -> None:
    """The ``threads`` setting of every command: 0 (torch's default) or a positive count."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: torch's default), got {threads}")


def genotype_error(value: str, err: Exception, writer: str) -> ValueError:
    """One line for a ``model.genotype`` that does not load: the setting, the cause (whitespace collapsed, cut at
    300 characters) and ``writer``, the command that writes such files."""
    msg = " ".join(str(err).split())
    return ValueError(f"model.genotype={value}: {msg[:300]}{' ...' if len(msg) > 300 else ''} ({writer})")


@dataclass
class CommandRun:
    """The top-level settings every ``nasp`` run config shares (its sections are the subclass's fields).

    ``__derived__`` maps nested keys to the top-level key they are copied from after every merge
    (``{"search.seed": "seed"}``), so one ``seed`` drives everything (:mod:`nasp.config` refuses those keys as
    input)."""

    seed: int = 0
    device: str = "cpu"
    threads: int = 0                # 0: torch's default

    __derived__: ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        check_device(self.device)
        check_threads(self.threads)
        for dotted, source in self.__derived__.items():
            *sections, key = dotted.split(".")
            target = self
            for name in sections:
                target = getattr(target, name)
            setattr(target, key, getattr(self, source))
