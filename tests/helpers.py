"""Test data builders: folders of real images (sklearn digits, the shared sample) plus broken files;
and the repository's scripts as modules."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from raydetect.images import digits_split

BROKEN_FILES = {
    "zero.png": "empty",
    "notes.jpg": "not an image",
    "truncated.png": "truncated",
    "tiny.png": "too small",
}


def digit_png(i: int, mode: str = "L") -> bytes:
    (_, _), (x, _) = digits_split()
    arr = np.rint(x[i, 0] * 255).astype(np.uint8)
    img = Image.fromarray(arr, "L")
    if mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16) * 257)
    elif mode != "L":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if mode == "CMYK" else "PNG")
    return buf.getvalue()


def write_digit_folder(root: Path, n: int = 24, broken: bool = True) -> dict[str, str]:
    """Real digit images (several modes) and broken files; returns {relative id: expected status}."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    modes = ["L", "RGB", "RGBA", "I;16", "CMYK", "P"]
    for i in range(n):
        mode = modes[i % len(modes)]
        name = f"sub{i % 3}/digit{i:03d}.{'jpg' if mode == 'CMYK' else 'png'}"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(digit_png(i, mode))
        expected[name] = "ok"
    if broken:
        (root / "zero.png").write_bytes(b"")
        (root / "notes.jpg").write_text("this is not a jpeg")
        (root / "truncated.png").write_bytes(digit_png(0, "RGB")[:40])
        buf = io.BytesIO()
        Image.new("L", (2, 2)).save(buf, format="PNG")
        (root / "tiny.png").write_bytes(buf.getvalue())
        expected.update(dict.fromkeys(BROKEN_FILES, "error"))
    return expected


ROOT = Path(__file__).resolve().parents[1]


def tables_script() -> ModuleType:
    """scripts/tables.py as a module (it loads bench/ modules through its ``_bench``)."""
    spec = importlib.util.spec_from_file_location("raydetect_tables", ROOT / "scripts" / "tables.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
