"""Small images and folder trees for the image-reader tests (one home for the helpers they share)."""

from __future__ import annotations

import io

import numpy as np


def image_bytes(value: int, size: tuple[int, int] = (8, 8), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    """An encoded image of ``size`` (width, height), every pixel ``value``, converted to ``mode``, in format ``fmt``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).convert(mode).save(buf, fmt)
    return buf.getvalue()


def write_tree(root, files: dict[str, bytes]):
    """Write ``{relative path: bytes}`` under ``root`` (folders made as needed); returns ``root``."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root
