"""sklearn's 8x8 digits (the input ``digits``): the held-out test split, for tests and the digits model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from raydetect.config import Source
from raydetect.images import digits_split
from raydetect.stages.readers import Item, Reader, Row

URI = "digits"


class DigitsReader(Reader):
    name = "digits"
    lists_files = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decode = True  # arrays already: nothing to defer
        self._digits: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def detects(cls, source: Source, files: list[str]) -> bool:
        return source.uri == URI

    @classmethod
    def plan(cls, source: Source, fs: Any, files: list[str]) -> list[Item]:
        (_, _), (x_te, _) = digits_split()
        stop = len(x_te) if source.limit is None else min(source.offset + source.limit, len(x_te))
        return [{"item": f"digits-test-{i}", "path": "sklearn:digits/test", "index": i} for i in range(source.offset, stop)]

    def rows(self, item: Item) -> Iterable[Row]:
        if self._digits is None:
            self._digits = digits_split()[1]
        x, y = self._digits
        i = item["index"]
        return [{"id": item["item"], "path": item["path"], "label": int(y[i]), "image": x[i], "status": "ok", "error": ""}]
