"""WebDataset ``.tar`` shards: one row per sample (members sharing a key), in the order stored.

A shard that cannot be opened is one error row; a shard that breaks off midway keeps the samples
read so far, and the sample it broke in becomes an error row.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

from raydetect.config import Source
from raydetect.stages.readers import Item, Reader, Row
from raydetect.store import fs_path

# A sample's image member, by extension, in order of preference.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff", "gif", "img")
LABEL_EXTS = ("cls", "label")


def is_tar(name: str) -> bool:
    return name.lower().endswith((".tar", ".tar.gz", ".tgz"))


def split_member(name: str) -> tuple[str, str]:
    """WebDataset's rule: a member's key is its path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class WebDatasetReader(Reader):
    name = "webdataset"
    per_row_skip = True

    @classmethod
    def detects(cls, source: Source, files: list[str]) -> bool:
        return bool(files) and all(is_tar(f) for f in files)

    def rows(self, item: Item) -> Iterator[Row]:
        shard, path = item["item"], item["path"]
        key: str | None = None
        members: dict[str, bytes] = {}
        seen: set[str] = set()
        try:
            with self.fs.open_input_stream(fs_path(path)) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, ext = split_member(member.name)
                    if k != key:
                        if key is not None:
                            yield self._sample_row(shard, path, key, members, seen)
                        key, members = k, {}
                    members[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            reason = f"unreadable tar shard: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            if key is None:
                yield self.error_row(shard, path, -1, reason)
            else:  # the sample being read when the shard broke
                yield self.error_row(self._sample_id(shard, key, seen), path, -1, reason)
            return
        if key is not None:
            yield self._sample_row(shard, path, key, members, seen)
        elif not seen:
            yield self.error_row(shard, path, -1, "tar shard holds no files")

    @staticmethod
    def _sample_id(shard: str, key: str, seen: set[str]) -> str:
        rid = f"{shard}#{key}"
        n = 1
        while rid in seen:  # a key split across the shard (not WebDataset order): keep ids unique
            n += 1
            rid = f"{shard}#{key}~{n}"
        seen.add(rid)
        return rid

    def _sample_row(self, shard: str, path: str, key: str, members: dict[str, bytes], seen: set[str]) -> Row:
        rid = self._sample_id(shard, key, seen)
        # Fields are named by what follows the key ("png", "cls", "b.png"); the last part says the format.
        by_last = {ext.rsplit(".", 1)[-1]: ext for ext in sorted(members, reverse=True)}
        label = -1
        for ext in LABEL_EXTS:
            if ext in members or ext in by_last:
                field = ext if ext in members else by_last[ext]
                try:
                    label = int(members[field].decode().strip())
                except ValueError:
                    return self.error_row(rid, path, -1, f"label member .{field} is not an integer")
                break
        image = next((members[by_last[e]] for e in IMAGE_EXTS if e in by_last), None)
        if image is None:
            found = ", ".join(sorted(members)) or "none"
            return self.error_row(rid, path, label, f"sample has no image member (.jpg, .png, ...); found: {found}")
        return self.decoded_row(rid, path, label, image)
