"""The audit's per-image work at other IG chunk sizes and under ``torch.compile`` (issue 14's candidates).

    python bench/chunk.py [--images 64] [--chunks 16 32 64 128] [--compile] [--repeats 3]

Each configuration scores the same decoded images with the bench-audit bundle (``bench/audit.py``
trains it under runs/bench-audit/), in a fresh process of its own per repeat (so each has its own
peak RSS), configurations interleaved within a repeat. The first batch of 16 is the warm-up (for
``--compile``, the compilation) and is timed apart; the rest is the steady per-image cost. Every
configuration's scores are compared with the default's (DEFAULT_CHUNK, eager): a change is kept
only where it pays and moves no score by more than 1e-5. Appends one JSON line per run to --jsonl.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"
BUNDLE = ROOT / "runs" / "bench-audit" / "corrected" / "detector"
BATCH = 16


def one(chunk: int, compiled: bool, images: int) -> dict[str, Any]:
    """Score ``images`` sample images in this process at IG chunk ``chunk`` (0: the default)."""
    import torch

    from raydetect.detect import Detector
    from raydetect.detect.score import Scorer
    from raydetect.images import load_image_folder

    torch.set_num_threads(2)
    det = Detector.load(str(BUNDLE))
    model = det.load_model("cpu")
    _, acfg, fcfg = det.configs()
    if chunk:
        acfg = replace(acfg, internal_batch_size=chunk)
    if compiled:
        model.net = torch.compile(model.net, dynamic=False)
    scorer = Scorer(model, acfg, fcfg, det.head, None, det.views_key)
    x = torch.from_numpy(load_image_folder(DATA, model.info.preprocess, limit=images).images)
    t0 = time.perf_counter()
    scores = [scorer(x[:BATCH]).numpy()]
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores += [scorer(x[i : i + BATCH]).numpy() for i in range(BATCH, len(x), BATCH)]
    steady = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    return {
        "chunk": chunk, "compiled": compiled, "images": len(x), "warmup_s": warm, "steady_s": steady,
        "steady_ms_per_image": 1000 * steady / (len(x) - BATCH), "peak_rss_mib": peak,
        "scores": np.concatenate(scores).tolist(),
    }  # fmt: skip


def chunk_markdown(records: list[dict[str, Any]]) -> str:
    """BENCHMARKS.md's table of the newest run in ``records``."""
    from raydetect.report.document import markdown_table
    from raydetect.report.tables import median_range as med
    from raydetect.report.tables import newest_run

    run = newest_run(records)
    key = (run[0]["command"], run[0]["commit"])
    configs = list(dict.fromkeys((r["chunk"], r["compiled"]) for r in run))
    base = {r["repeat"]: r["steady_ms_per_image"] for r in run if (r["chunk"], r["compiled"]) == (0, False)}
    body = []
    for c in configs:
        mine = [r for r in run if (r["chunk"], r["compiled"]) == c]
        speed = [base[r["repeat"]] / r["steady_ms_per_image"] for r in mine]
        label = ("default" if c[0] == 0 else str(c[0])) + (", torch.compile" if c[1] else "")
        body.append([
            label, med([r["warmup_s"] for r in mine], 1) + " s", med([r["steady_ms_per_image"] for r in mine], 0) + " ms",
            med(speed, 2), med([r["peak_rss_mib"] for r in mine], 0) + " MiB",
            f"{max(r['max_score_diff'] for r in mine):.1e}",
        ])  # fmt: skip
    head = ["IG chunk", "first batch of 16", "per image after it", "speed vs default", "peak RSS", "largest score change"]
    return (
        f"`{key[0]}` at commit {key[1]}: {run[0]['images']} sample images, batches of {BATCH}; medians of "
        f"{len({r['repeat'] for r in run})} repeats (range), each configuration in a fresh process, interleaved.\n\n"
        + markdown_table(head, body)
        + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--chunks", type=int, nargs="+", default=[16, 64, 128], help="besides the default")
    ap.add_argument("--compile", action="store_true", help="also the default chunk under torch.compile")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jsonl", type=Path, default=ROOT / "bench" / "results" / "chunk.jsonl")
    ap.add_argument("--one", nargs=3, type=int, default=None, help=argparse.SUPPRESS)  # chunk compiled images
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], bool(args.one[1]), args.one[2])))
        return
    if not BUNDLE.exists():
        raise SystemExit(f"no bundle at {BUNDLE}: run `python bench/audit.py` once first (it trains it)")
    command = "python bench/chunk.py " + shlex.join(sys.argv[1:])
    git = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    configs = [(0, False), *((c, False) for c in args.chunks), *([(0, True)] if args.compile else [])]
    for rep in range(args.repeats):
        reference: list[float] | None = None
        for chunk, compiled in configs:
            out = subprocess.run([sys.executable, __file__, "--one", str(chunk), str(int(compiled)), str(args.images)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            scores = r.pop("scores")
            reference = scores if reference is None else reference
            diff = float(np.max(np.abs(np.subtract(scores, reference))))
            r.update(command=command, commit=commit, repeat=rep, max_score_diff=diff)
            print(f"repeat {rep} chunk {chunk or 'default'}{' compiled' if compiled else ''}: first batch {r['warmup_s']:.1f} s, "
                  f"{r['steady_ms_per_image']:.0f} ms/image after, peak {r['peak_rss_mib']:.0f} MiB, "
                  f"score change {r['max_score_diff']:.1e}", flush=True)  # fmt: skip
            with args.jsonl.open("a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
