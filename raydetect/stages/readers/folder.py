"""Folders of image files: any folder (no labels), and ImageNet's ``<wnid>/<file>`` (labels from the wnid).

Every file is a work item, image extension or not: a stray file becomes an error row rather than
silently vanishing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from raydetect.config import Source
from raydetect.images import imagenet_label, wnid_to_index
from raydetect.stages.readers import Item, Reader, Row
from raydetect.store import fs_path


class FolderReader(Reader):
    name = "folder"

    @classmethod
    def detects(cls, source: Source, files: list[str]) -> bool:
        return bool(files)  # the fallback: any listing

    def label(self, path: str) -> int:
        return -1

    def rows(self, item: Item) -> Iterable[Row]:
        path = item["path"]
        label = self.label(path)
        try:
            with self.fs.open_input_stream(fs_path(path)) as f:
                data = f.read()
        except OSError as exc:
            return [self.error_row(item["item"], path, label, f"cannot read file: {exc}")]
        return [self.decoded_row(item["item"], path, label, data)]


class ImageNetReader(FolderReader):
    name = "imagenet"

    @classmethod
    def detects(cls, source: Source, files: list[str]) -> bool:
        wnids = wnid_to_index()
        return bool(files) and all(Path(f).parent.name in wnids for f in files)

    def label(self, path: str) -> int:
        return imagenet_label(path)
