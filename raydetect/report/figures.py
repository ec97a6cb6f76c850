"""The paper's figures, and the thumbnails of the audit report, as PNG bytes.

* Figure 1: clean/adversarial pairs, each image beside its attribution map blended over it, with
  the predicted class and confidence. Both maps of a pair share one colour scale, so the smaller
  attributions the paper saw on adversarial images show as paler maps.
* Figure 2: the distribution of |attribution| values, clean vs adversarial, per attack. It is
  read from the descriptors every row already has: the K quantiles of an image's map are its
  sorted values resampled, so pooling them over images is the pooled distribution, at no cost.
* ROC curves of each detector per attack, on the held-out test pairs.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from raydetect.errors import RaydetectError
from raydetect.explain import Explainer
from raydetect.images import Preprocess, class_name, decode_image, digits_split
from raydetect.report.document import Block, Heading, Image, Paragraph
from raydetect.store import fs_path, is_remote, read_bytes, resolve

PAIRS = 4  # clean/adversarial pairs Figure 1 shows
THUMB = 128  # pixels per side of an audit thumbnail


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kwargs)
    _pyplot().close(fig)
    return buf.getvalue()


def fit_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) attribution map resized to the image's (H, W): layer explainers attribute to a
    coarser grid than the pixels."""
    if amap.shape == size:
        return amap
    from PIL import Image as PILImage

    img = PILImage.fromarray(np.asarray(amap, np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), PILImage.Resampling.BILINEAR), np.float32)


def hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0,1] -> (H, W, 3) for display (grey images repeat their channel)."""
    img = np.asarray(image, np.float32).transpose(1, 2, 0)
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


# --------------------------------------------------------------------------------------------
# Figure 1


@dataclass
class ExamplePair:
    """One clean image and its adversarial twin, each with its channel-summed attribution map."""

    attack: str
    clean: np.ndarray  # (C, H, W) in [0,1]
    adversarial: np.ndarray
    clean_map: np.ndarray  # (H, W)
    adversarial_map: np.ndarray
    clean_pred: str
    clean_conf: float
    adversarial_pred: str
    adversarial_conf: float
    name: str = ""  # the clean image's id


def round_robin(groups: dict[str, list[Any]], k: int = PAIRS, key: Callable[[Any], Any] | None = None) -> list[tuple[str, Any]]:
    """Up to k (group, item) taking one item per group in turn, so every group shows; with ``key``,
    each group takes its first item whose key none before had (the same image, not twice)."""
    queues = {g: list(items) for g, items in groups.items()}
    seen: set[Any] = set()
    out: list[tuple[str, Any]] = []
    while len(out) < k and any(queues.values()):
        for g, queue in queues.items():
            if len(out) < k and queue:
                fresh = next((i for i, item in enumerate(queue) if key is None or key(item) not in seen), 0)
                item = queue.pop(fresh)
                seen.add(key(item) if key else None)
                out.append((g, item))
    return out


def explain_pairs(
    explainer: Explainer,
    attacks: Sequence[str],
    clean: np.ndarray,
    adversarial: np.ndarray,
    clean_keys: np.ndarray,
    adversarial_keys: np.ndarray,
    names: Sequence[str] | None = None,
) -> list[ExamplePair]:
    """Explain each clean image and its twin (N, C, H, W) as the experiment did; twins are passed
    for the paper's ``pair`` baseline and ignored by every other baseline."""
    x, a = torch.from_numpy(np.asarray(clean, np.float32)), torch.from_numpy(np.asarray(adversarial, np.float32))
    ec = explainer(x, keys=clean_keys, twins=a)
    ea = explainer(a, keys=adversarial_keys, twins=x)
    n_classes = explainer.model.num_classes
    out = []
    for i, attack in enumerate(attacks):
        (pc, tc), (pa, ta) = [(e.logits[i].softmax(0).cpu(), int(e.targets[i])) for e in (ec, ea)]
        out.append(
            ExamplePair(
                attack, np.asarray(clean[i]), np.asarray(adversarial[i]), ec.attributions[i].sum(0).cpu().numpy(),
                ea.attributions[i].sum(0).cpu().numpy(), class_name(tc, n_classes), float(pc[tc]),
                class_name(ta, n_classes), float(pa[ta]), names[i] if names is not None else "",
            )
        )  # fmt: skip
    return out


def pairs_figure(pairs: Sequence[ExamplePair]) -> bytes:
    """Figure 1: one row per pair: clean image, its map, adversarial image, its map."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs), 4, figsize=(11, 2.7 * len(pairs) + 0.6), dpi=100, squeeze=False, layout="constrained")
    for row, p in zip(axes, pairs, strict=True):
        # One scale per pair (99th percentile of |attribution| over both maps): magnitudes compare.
        scale = float(np.percentile(np.abs(np.concatenate([p.clean_map.ravel(), p.adversarial_map.ravel()])), 99)) or 1e-12
        for ax, img, amap, title in (
            (row[0:2], p.clean, p.clean_map, f"clean: {p.clean_pred} ({p.clean_conf:.1%})"),
            (row[2:4], p.adversarial, p.adversarial_map, f"adversarial: {p.adversarial_pred} ({p.adversarial_conf:.1%})"),
        ):
            ax[0].imshow(hwc(img), interpolation="nearest")
            ax[0].set_title(_short(title), fontsize=9)
            ax[1].imshow(hwc(img).mean(2), cmap="gray", interpolation="nearest")
            heat = ax[1].imshow(
                fit_map(amap, img.shape[1:]), cmap="bwr", vmin=-scale, vmax=scale, alpha=0.6, interpolation="nearest"
            )
            ax[1].set_title(f"sum |attribution| = {np.abs(amap).sum():.3g}", fontsize=9)
        row[0].set_ylabel(_short(p.attack, 28) + (f"\n{_tail(p.name, 28)}" if p.name else ""), fontsize=9)
        fig.colorbar(heat, ax=list(row), fraction=0.02, pad=0.01)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Clean vs adversarial: attributions (red positive, blue negative; one colour scale per pair)", fontsize=11)
    return png_bytes(fig)


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _tail(text: str, n: int = 40) -> str:
    return text if len(text) <= n else "\u2026" + text[1 - n :]


# --------------------------------------------------------------------------------------------
# Figure 2


def attribution_values(X: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, str] | None:
    """(N, K) |attribution| values per row from its quantile descriptors, and what they are; None
    when the descriptors hold no quantiles."""
    names = list(names)
    for prefix, what in (
        ("absq", "|attribution| of the channel-summed map"),
        ("q", "|attribution| of the channel-summed map"),
        ("c", "|attribution| per channel group"),
    ):
        cols = [i for i, n in enumerate(names) if n.startswith(prefix) and n[len(prefix) :].replace("q", "").isdigit()]
        if cols:
            return np.abs(np.asarray(X, np.float64)[:, cols]), what
    return None


def distribution_figure(dists: dict[str, tuple[np.ndarray, np.ndarray]], what: str) -> bytes:
    """Figure 2: per attack, histograms of pooled |attribution| values, clean vs adversarial."""
    plt = _pyplot()
    n = len(dists)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.5, 4.2 * cols), 3.4 * rows), dpi=100, squeeze=False)
    for ax, (attack, (clean, adv)) in zip(axes.ravel(), dists.items(), strict=False):
        pos = np.concatenate([clean[clean > 0], adv[adv > 0]])
        if len(pos) == 0:
            ax.text(0.5, 0.5, "all attributions are 0", ha="center", transform=ax.transAxes)
        else:
            # Log-spaced bins from the 1st percentile of the non-zero values; smaller ones join the first bin.
            lo, hi = np.percentile(pos, [1, 100])
            bins = np.geomspace(max(lo, hi * 1e-9), hi * 1.0001, 40)
            for values, label, color in ((clean, "clean", "#4c72b0"), (adv, "adversarial", "#c44e52")):
                nz = values[values > 0]
                zero = 1 - len(nz) / max(len(values), 1)
                label = f"{label}: median {np.median(values):.2g}" + (f", {zero:.0%} zeros" if zero else "")
                weights = np.full(len(nz), 1 / max(len(values), 1))  # bar height: share of all values
                ax.hist(np.clip(nz, bins[0], bins[-1]), bins=bins, weights=weights, histtype="stepfilled", alpha=0.35,
                        color=color, edgecolor=color, linewidth=1.2, label=label)  # fmt: skip
            ax.set_xscale("log")
            ax.set_ylabel("share of values", fontsize=9)
        ax.set_title(_short(attack), fontsize=10)
        ax.set_xlabel("|attribution|", fontsize=9)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"Distribution of {what}, clean vs adversarial (pooled over images)", fontsize=11)
    fig.tight_layout()
    return png_bytes(fig)


# --------------------------------------------------------------------------------------------
# ROC curves


def roc_figure(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> bytes:
    """ROC curves on held-out pairs: one panel per attack, one curve per detector."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    n = len(curves)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.5, 4 * cols), 3.8 * rows), dpi=100, squeeze=False)
    for ax, (attack, by_kind) in zip(axes.ravel(), curves.items(), strict=False):
        for kind, (y, s) in by_kind.items():
            if len(np.unique(y)) < 2:
                continue
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, label=f"{kind} (AUC {roc_auc_score(y, s):.3f}, {len(y) // 2} pairs)")
        ax.plot([0, 1], [0, 1], color="#999", linestyle=":", linewidth=1)
        ax.axvline(0.05, color="#bbb", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(_short(attack), fontsize=10)
        ax.set_xlabel("false-positive rate (clean flagged)", fontsize=9)
        ax.set_ylabel("true-positive rate", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("ROC curves on held-out pairs (dashed: 5% false positives)", fontsize=11)
    fig.tight_layout()
    return png_bytes(fig)


# --------------------------------------------------------------------------------------------
# The figures of one experiment, as report blocks


@dataclass
class Figures:
    """What an experiment's figures are drawn from; a part left empty says why in ``notes``."""

    pairs: list[ExamplePair] = field(default_factory=list)
    distributions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # attack -> (clean, adv)
    values: str = "|attribution|"  # what the distributions hold
    roc: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)  # attack -> kind -> (y, s)
    notes: list[str] = field(default_factory=list)


def figure_blocks(figs: Figures, prefix: str = "") -> tuple[list[Block], dict[str, bytes]]:
    """Headings, images and notes for the figures, and the PNG files they name."""
    files: dict[str, bytes] = {}
    blocks: list[Block] = []
    parts = (
        ("figure1_pairs.png", "Figure 1: clean and adversarial attributions", figs.pairs, lambda: pairs_figure(figs.pairs)),
        ("figure2_distribution.png", "Figure 2: distribution of attributions, clean vs adversarial", figs.distributions,
         lambda: distribution_figure(figs.distributions, figs.values)),
        ("roc.png", "ROC curves per attack and detector (held-out pairs)", figs.roc, lambda: roc_figure(figs.roc)),
    )  # fmt: skip
    for name, title, data, draw in parts:
        if data:
            files[prefix + name] = draw()
            blocks += [Heading(title, 4), Image(prefix + name, title)]
    blocks += [Paragraph(f"_{note}_") for note in figs.notes]
    return blocks, files


# --------------------------------------------------------------------------------------------
# Reading an input image again (for figures and audit thumbnails)


def reread_image(path: str, row_id: str, pre: Preprocess) -> np.ndarray:
    """An input image as the pipeline decoded it, read again by its row's path; raises
    :class:`RaydetectError` where that cannot be done (images inside Parquet files)."""
    if path.startswith("sklearn:digits"):
        _, (x, _) = digits_split()
        return x[int(row_id.rsplit("-", 1)[1])]
    if path.lower().endswith((".parquet", ".pq")):
        raise RaydetectError("the image lives inside a Parquet file; it is not read again")
    if path.lower().endswith((".tar", ".tar.gz", ".tgz")):
        raise RaydetectError("the image lives inside a WebDataset shard; it is not read again")
    if not path:
        raise RaydetectError("the image came from a ray.data.Dataset without paths; it is not read again")
    try:
        return decode_image(read_bytes(path), pre)
    except (OSError, ValueError) as exc:  # ImageError is a ValueError: the file changed or vanished since
        raise RaydetectError(f"cannot read {path} again: {exc}") from exc


@functools.lru_cache(maxsize=8)
def _root_spellings(root: str) -> tuple[str, ...]:
    """The ways a row's path may spell the audited root, longest first (resolved once per root:
    the report shows every input's path)."""
    bases = {root.rstrip("/"), resolve(root).rstrip("/")} | ({fs_path(root).rstrip("/")} if is_remote(root) else set())
    return tuple(sorted(bases, key=len, reverse=True))


def relative_path(path: str, root: str) -> str:
    """``path`` relative to the audited root (a folder or a single file), as users see it."""
    for base in _root_spellings(root):
        if path == base:
            return os.path.basename(path)
        if path.startswith(base + "/"):
            return path[len(base) + 1 :]
    return path


def shown_path(path: str, row_id: str, root: str) -> str:
    """What a report shows for an input: its path relative to the root; for rows inside Parquet
    files, that file's relative path and the row id; for digits, the id."""
    if path.startswith("sklearn:"):
        return row_id
    rel = relative_path(path, root)
    if path.lower().endswith((".parquet", ".pq")):
        return relative_path(row_id, root) if row_id.startswith(path) else f"{rel}: {row_id}"
    return rel


def thumbnail(image: np.ndarray, size: int = THUMB) -> bytes:
    """PNG of a (C, H, W) [0,1] image, scaled to ``size`` px (small images stay blocky)."""
    from PIL import Image as PILImage

    arr = np.clip(np.rint(hwc(image) * 255), 0, 255).astype(np.uint8)
    img = PILImage.fromarray(arr, "RGB")
    resample = PILImage.Resampling.NEAREST if max(img.size) < size else PILImage.Resampling.LANCZOS
    buf = io.BytesIO()
    img.resize((size, size), resample).save(buf, format="PNG")
    return buf.getvalue()


def heatmap_thumbnail(image: np.ndarray, attribution: np.ndarray, size: int = THUMB) -> bytes:
    """PNG of captum's blended heat map (red positive, blue negative) of a (H, W) map over the image."""
    from captum.attr import visualization as viz
    from matplotlib.figure import Figure

    dpi = 64
    fig = Figure(figsize=(size / dpi, size / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    amap = fit_map(np.asarray(attribution, np.float32), image.shape[1:]).astype(np.float64)
    viz.visualize_image_attr(amap[:, :, None], hwc(image), method="blended_heat_map",
                             sign="all", plt_fig_axis=(fig, ax), cmap="bwr", alpha_overlay=0.6, use_pyplot=False)  # fmt: skip
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
