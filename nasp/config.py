"""Small helpers for dataclass settings shared by the search loop, the trainers and the recommenders."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["config_from_dict"]

T = TypeVar("T")


def config_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """``cls(**d)`` that rejects unknown keys with a message naming them and the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
    return cls(**d)
