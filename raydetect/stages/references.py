"""Reference images, drawn from an attack job's clean images: GradientShap's ``train`` baseline and
the peers' statistics (LID's neighbours, Mahalanobis' Gaussian).

GradientShap explains an image against baselines drawn from clean images. The feature job picks
a fixed, seeded sample of the attack output's correctly classified clean images (at most
``MAX_REFERENCES``, at most a tenth of them; for peers at most ``MAX_PEER_REFERENCES``, a quarter:
LID needs k + 1 neighbours and a covariance wants more) and keeps those images out of everything else: their
rows are written as ``skipped``, so a reference never becomes a fitted, calibration or test row,
and no evaluated image is explained against itself. The sample is saved beside the features
(``_references.npz``), reused on resume, and carried into the detector bundle (the audit must
explain against the same references).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raydetect.config import AttributionConfig, FeatureConfig, from_dict
from raydetect.errors import RaydetectError
from raydetect.images import decode_png
from raydetect.store import join, open_filesystem, output_files, read_bytes, read_output, write_bytes

REFERENCE_FILE = "_references.npz"
MAX_REFERENCES = 32
MAX_PEER_REFERENCES = 100
SKIP_REASON = "clean reference image (gradient_shap 'train' baseline, LID, Mahalanobis); kept out of fitting and evaluation"


def reference_budget(attribution: AttributionConfig, features: FeatureConfig) -> tuple[int, int] | None:
    """(most references, 1/share of the clean images they may take), or None when nothing needs them."""
    if features.needs_references:
        return MAX_PEER_REFERENCES, 4
    return (MAX_REFERENCES, 10) if attribution.baseline == "train" else None


def uses_references(job: dict[str, Any]) -> bool:
    """Whether a feature job's recorded configuration explained or described against references."""
    acfg = from_dict(AttributionConfig, job.get("attribution", {}))
    return reference_budget(acfg, from_dict(FeatureConfig, job.get("features", {}))) is not None


def choose_references(
    attacks_dir: str, seed: int = 0, n_max: int = MAX_REFERENCES, share: int = 10
) -> tuple[list[str], np.ndarray]:
    """(ids, images (R, C, H, W) float32 in [0,1]) of a seeded sample of correctly classified clean images."""
    table = read_output(attacks_dir, columns=["id", "kind", "status", "correct"])
    if table is None:
        raise RaydetectError(f"no attack output under {attacks_dir}")
    keep = pc.and_(pc.and_(pc.equal(table["kind"], "clean"), pc.equal(table["status"], "ok")), table["correct"])
    candidates = table.filter(keep).column("id").to_pylist()
    n = min(n_max, len(candidates) // share)
    if n < 1:
        raise RaydetectError(
            f"references are drawn from clean images, but {attacks_dir} has only {len(candidates)} correctly "
            f"classified ones (need at least {share}: one in {share} becomes a reference)"
        )
    order = sorted(candidates, key=lambda i: hashlib.blake2b(f"{seed}:ref:{i}".encode(), digest_size=8).digest())
    ids = sorted(order[:n])
    fs, _ = open_filesystem(attacks_dir)
    # Only the chosen images' PNGs are read, not every image of the attack output.
    pngs = pq.read_table(output_files(attacks_dir), filesystem=fs, columns=["id", "png"], filters=[("id", "in", ids)])
    by_id = dict(zip(pngs.column("id").to_pylist(), pngs.column("png").to_pylist(), strict=True))
    return ids, np.stack([decode_png(by_id[i]) for i in ids])


def save_references(features_dir: str, ids: list[str], images: np.ndarray) -> None:
    buf = io.BytesIO()
    images8 = np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)  # PNG-decoded images are exactly 8-bit
    np.savez(buf, ids=np.asarray(ids, dtype=str), images=images8)
    write_bytes(join(features_dir, REFERENCE_FILE), buf.getvalue())


def load_references(features_dir: str) -> tuple[list[str], np.ndarray] | None:
    """The references a feature job saved (None if it saved none)."""
    try:
        data = read_bytes(join(features_dir, REFERENCE_FILE))
    except (OSError, RaydetectError):
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as d:
        return [str(i) for i in d["ids"]], d["images"].astype(np.float32) / 255


class MarkReferences:
    """Ray Data map_batches: rows of reference images become ``skipped`` (picklable callable)."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = pa.array(sorted(ids), pa.string())

    def __call__(self, table: Any) -> Any:
        hit = pc.is_in(table["pair_id"], value_set=self.ids)
        for col, value in (("status", "skipped"), ("error", SKIP_REASON)):
            i = table.schema.get_field_index(col)
            table = table.set_column(i, col, pc.if_else(hit, pa.scalar(value), table[col]))
        return table
