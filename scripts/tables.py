"""Every results table in README.md, REPRODUCTION.md and STUDY.md, regenerated from the committed
result files under bench/results/ (one JSON object a line, each with the command that made it).

    python scripts/tables.py                 # rewrite the generated blocks in place
    python scripts/tables.py --check         # exit 1 if a block differs from its result file
    python scripts/tables.py record runs/repro-effnet/results.json --command "raydetect reproduce ..." \\
        --to bench/results/reproduce-efficientnet_lite0.jsonl     # a reproduce run's results as JSONL
    python scripts/tables.py record-evaluate runs/digits-eval/evaluate/results.json --command "..." \\
        --bundle "what the bundle is" --to bench/results/evaluate-digits.jsonl   # an evaluate run's

A generated block sits between ``<!-- tables:NAME -->`` and ``<!-- /tables:NAME -->``; everything
outside the markers is prose and stays as written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from raydetect.config import AttributionConfig, FeatureConfig
from raydetect.report.document import Table, markdown_table, to_markdown
from raydetect.report.experiments import reproduction_report
from raydetect.report.tables import attack_rank, pct, robustness_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ("README.md", "REPRODUCTION.md", "STUDY.md", "BENCHMARKS.md", "docs/guide.md", "docs/cluster.md")
BLOCK = re.compile(r"(<!-- tables:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /tables:(?P=name) -->)", re.S)


def read_jsonl(name: str) -> list[dict[str, Any]]:
    path = RESULTS / name
    if not path.exists():
        raise SystemExit(f"tables: missing result file {path.relative_to(ROOT)}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- reproduce ------------------------------------------------------------------------------------
def record(results_json: Path, command: str, to: Path) -> None:
    """One line per protocol of a ``raydetect reproduce`` run's results.json (figures are not kept)."""
    run = json.loads(results_json.read_text())
    shared = {k: run.get(k) for k in ("model", "attribution", "features", "data", "limit", "offset")}
    with to.open("w") as f:
        for r in run["results"]:
            f.write(json.dumps({"command": command, **shared, **r}, sort_keys=True) + "\n")
    print(f"tables: {len(run['results'])} protocols -> {to}")


def record_evaluation(results_json: Path, command: str, bundle: str, to: Path) -> None:
    """One line per attack of a ``raydetect evaluate`` run's results.json."""
    run = json.loads(results_json.read_text())
    model = json.loads((Path(run["bundle"]) / "manifest.json").read_text())["model"]["name"]
    with to.open("w") as f:
        for r in run["robustness"]:
            line = {"model": model, "bundle": bundle, "command": command, "views_key": run.get("views_key", ""), **r}
            f.write(json.dumps(line) + "\n")
    print(f"tables: {len(run['robustness'])} attacks -> {to}")


def _repro_results(lines: list[dict[str, Any]]) -> list[SimpleNamespace]:
    """What ``reproduction_report`` reads of a ``reproduce.ReproResult`` (that module imports Ray; this one does not)."""
    return [
        SimpleNamespace(
            protocol=d["protocol"], model=d["model"]["name"], n_images=d["n_images"], n_correct=d["n_correct"],
            attack_rows=d["attacks"], detection_rows=d["detection"], seconds=d["seconds"], resumed=d.get("resumed", 0),
            transfer=d["transfer"], bundle=d["bundle"], bundle_calibration=d.get("bundle_calibration") or {},
            bundle_metrics=d.get("bundle_metrics") or {}, robustness=d.get("robustness") or [],
            robustness_images=d.get("robustness_images", 0), figures=None,
        )
        for d in lines
    ]  # fmt: skip


def reproduction(file: str) -> str:
    """The report ``raydetect reproduce`` wrote, one heading level down, with its command."""
    lines = read_jsonl(file)
    first = lines[0]
    report = reproduction_report(
        _repro_results(lines), AttributionConfig(**_tuples(first["attribution"])), FeatureConfig(**_tuples(first["features"]))
    )
    body = to_markdown(report).split("\n", 2)[2]  # drop the report's own title
    body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)
    return f"```bash\n{first['command']}\n```\n\n{body.strip()}\n"


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


PAPER_TABLE1 = {"untargeted": "99.13%", "random": "98.41%", "second": "99.87%"}
PAPER_TABLE2 = {("untargeted", "lr"): "99.16%", ("untargeted", "rf"): "99.81%", ("random", "lr"): "98.96%",
                ("random", "rf"): "99.83%", ("second", "lr"): "99.17%", ("second", "rf"): "99.87%"}  # fmt: skip
MODES = {"untargeted": "Untargeted", "random": "Targeted (random)", "second": "Targeted (2nd most confident)"}


def repro_summary(file: str) -> str:
    """The paper's Tables 1 and 2 beside the replication and the corrected protocol at each eps."""
    by = {d["protocol"]: d for d in read_jsonl(file)}
    paper, corrected = by.get("paper"), by["corrected"]
    eps = sorted({a["eps"] for a in corrected["attacks"]}, reverse=True)
    from raydetect.config import format_eps

    def attack(d: dict[str, Any] | None, mode: str, e: float | None = None) -> dict[str, Any] | None:
        rows = [a for a in (d or {}).get("attacks", []) if a["mode"] == mode and (e is None or abs(a["eps"] - e) < 1e-9)]
        return rows[0] if rows else None

    def success(a: dict[str, Any] | None) -> str:
        return "not run" if a is None else f"{pct(a['success_rate'])} ({a['n_success']}/{a['n_correct']})"

    def detection(d: dict[str, Any] | None, a: dict[str, Any] | None, det: str) -> str:
        rows = [
            r for r in (d or {}).get("detection", []) if a is not None and r["attack"] == a["attack"] and r["detector"] == det
        ]
        if not rows:
            return "too few pairs" if a is not None else "not run"
        r = rows[0]
        return f"{pct(r['accuracy'])} / {r['auc']:.3f}"

    heads1 = ["Attack", "paper's Table 1 (Inception-V3)", "paper protocol (1 step, eps 0.1)",
              *(f"BIM-10, eps {format_eps(e)}" for e in eps)]  # fmt: skip
    t1 = [[MODES[m], PAPER_TABLE1[m], success(attack(paper, m)), *(success(attack(corrected, m, e)) for e in eps)] for m in MODES]
    dets = sorted({r["detector"] for r in corrected["detection"]}, key=["lr", "rf", "xgboost"].index)
    heads2 = ["Attack", "Detector", "paper's Table 2: accuracy", "paper protocol: bal. accuracy / AUC",
              *(f"BIM-10 eps {format_eps(e)}: bal. accuracy / AUC" for e in eps)]  # fmt: skip
    t2 = [
        [MODES[m], det, PAPER_TABLE2.get((m, det), "-"), detection(paper, attack(paper, m), det),
         *(detection(corrected, attack(corrected, m, e), det) for e in eps)]
        for m in MODES for det in dets
    ]  # fmt: skip
    return (
        "Attack success over correctly classified images:\n\n" + markdown_table(heads1, t1) + "\n\n"
        "Detection on held-out test images: balanced accuracy at the threshold chosen on clean validation images for "
        "a 5% false-positive rate, and ROC AUC. The paper reports plain accuracy at 0.5 with no interval; its code "
        "evaluates about 100 test images.\n\n" + markdown_table(heads2, t2) + "\n"
    )


# -- robustness (raydetect evaluate, bench/hardening.py) -----------------------------------------
def _table(rows: list[dict[str, Any]]) -> str:
    t: Table = robustness_table(rows)
    return markdown_table(t.headers, t.rows)


def evaluate_digits(file: str) -> str:
    rows = read_jsonl(file)
    return f"```bash\n{rows[0]['command']}\n```\n\n{_table(sorted(rows, key=attack_rank))}\n"


def _bench(name: str) -> Any:
    """A module of bench/ (its table functions), loaded without running it."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _hardening() -> Any:
    return _bench("hardening")


def bench_audit(kind: str, before: str | None = None) -> str:
    """The newest ``bench/audit.py`` run of ``kind`` (throughput, memory, contention, startup; series: the
    memory run's RSS over time) in audit.jsonl."""
    mod = _bench("audit")
    run = mod.latest_run(read_jsonl("audit.jsonl"), "memory" if kind == "series" else kind, before)
    return {
        "throughput": mod.throughput_markdown,
        "memory": mod.memory_markdown,
        "contention": mod.contention_markdown,
        "startup": mod.startup_markdown,
        "steady": mod.steady_markdown,
        "series": mod.series_markdown,
    }[kind](run)


# The design the defaults follow (bench/hardening.py CHOSEN) and the half its README figures come from
# (STUDY.md, Hardening): (design, half, threshold calibration).
_DESIGN, _CALIBRATION = _hardening().CHOSEN
README_DESIGN = (_DESIGN, "confirmation", _CALIBRATION)


def hardening_readme(file: str, design: str, half: str, calibration: str) -> str:
    """README's robustness table: one design of bench/hardening.py on one half and one threshold
    calibration, in plain columns; an attack not run on that half shows its row from the other half,
    marked so."""
    every = [r for r in read_jsonl(file) if r.get("calibration", "split") == calibration]
    latest = {r["attack"]: r for r in every if r["design"] == design and r["half"] == half}  # a re-run replaces its row
    other = {r["attack"]: r for r in every if r["design"] == design and r["half"] != half}
    fallback = {a: r for a, r in other.items() if a not in latest and not a.endswith(("-2/255", "-8/255", "-16/255"))}
    from raydetect.config import format_eps
    from raydetect.report.tables import knows

    body = [
        [f"`{r['attack']}`" + (f" ({r['half']} half)" if r["attack"] in fallback else ""), knows(r), format_eps(r["eps"]),
         pct(r["success_rate"]), f"{r['auc']:.3f}", f"**{pct(r['evaded'])}**", f"{r['passes']:.0f}", r["n_attacked"]]
        for r in sorted([*latest.values(), *fallback.values()], key=attack_rank)
    ]  # fmt: skip
    heads = ["attack", "knows the detector?", "eps", "fools the model", "ROC AUC", "evaded", "attacker's passes/image", "images"]
    commands = sorted({r["command"] for r in [*latest.values(), *fallback.values()]})
    return (
        markdown_table(heads, body)
        + f"\n\nRows: `bench/results/{file}`, design `{design}`, {half} half unless marked, {calibration} threshold; "
        + "commands: "
        + "; ".join(f"`{c}`" for c in commands)
        + ".\n"
    )


def _modules() -> list[tuple[Path, str]]:
    """Every module of the package and the first paragraph of its docstring, on one line."""
    import ast

    pkg = ROOT / "raydetect"
    out = []
    for path in sorted(pkg.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if not doc.strip():
            raise SystemExit(f"tables: {path.relative_to(ROOT)} has no docstring for the module map")
        out.append((path.relative_to(pkg), " ".join(doc.strip().split("\n\n")[0].split())))
    return out


def module_map() -> str:
    """The guide's module map: every module and what it holds."""
    rows = [f"| `{p}` | {d.replace('|', '/')} |" for p, d in _modules()]
    return "\n".join(["| Module | What it holds |", "|---|---|", *rows]) + "\n"


def module_names() -> str:
    """The README's module map: every module by name, one line per package."""
    by_dir: dict[str, list[str]] = {}
    for p, _ in _modules():
        by_dir.setdefault(str(p.parent), []).append(p.stem)
    lines = []
    for d, names in by_dir.items():
        where = "`raydetect/`" if d == "." else f"`{d}/`"
        lines.append(f"- {where} " + ", ".join(f"`{n}`" for n in names))
    return "\n".join(lines) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "module-map": module_map,
    "module-names": module_names,
    "repro-efficientnet_lite0": lambda: reproduction("reproduce-efficientnet_lite0.jsonl"),
    "repro-digits_cnn": lambda: reproduction("reproduce-digits_cnn.jsonl"),
    "repro-summary": lambda: repro_summary("reproduce-efficientnet_lite0.jsonl"),
    "evaluate-digits": lambda: evaluate_digits("evaluate-digits.jsonl"),
    "evaluate-digits-secret": lambda: evaluate_digits("evaluate-digits-secret.jsonl"),
    "default-detector": lambda: evaluate_digits("default-detector-heldback.jsonl"),
    "peers-compare": lambda: _bench("peers").compare_markdown(read_jsonl("peers-compare.jsonl")),
    "peers-compare-full": lambda: _bench("peers").full_markdown(read_jsonl("peers-compare.jsonl")),
    "noise-digits": lambda: _bench("noise").noise_markdown(read_jsonl("noise-digits.jsonl")),
    "peers-combo": lambda: _bench("peers").combo_markdown(read_jsonl("peers-combo.jsonl")),
    "peers-noise": lambda: _bench("peers").noise_markdown(read_jsonl("peers-noise.jsonl")),
    "peers-digits": lambda: _bench("peers").digits_markdown(read_jsonl("peers-digits.jsonl")),
    "peer-cost": lambda: _bench("peers").cost_markdown(read_jsonl("peer-cost.jsonl")),
    "hardening": lambda: _hardening().summary_markdown(),  # bench/hardening.py reads bench/results/hardening.jsonl
    "readme-robust": lambda: hardening_readme("hardening.jsonl", *README_DESIGN),
    "bench-audit": lambda: bench_audit("throughput"),
    "bench-audit-no-heap-trim": lambda: bench_audit("throughput", "no_heap_trim"),
    "bench-memory": lambda: bench_audit("memory"),
    "bench-contention": lambda: bench_audit("contention"),
    "bench-startup": lambda: bench_audit("startup"),
    "bench-steady": lambda: bench_audit("steady"),
    "bench-memory-series": lambda: bench_audit("series"),
    "bench-pipeline": lambda: _bench("pipeline").pipeline_markdown(read_jsonl("pipeline.jsonl")),
    "bench-parts": lambda: _bench("parts").parts_markdown(read_jsonl("parts.jsonl")),
    "advtrain-digits": lambda: _bench("advtrain").advtrain_markdown(read_jsonl("advtrain-digits.jsonl")),
    "bench-chunk": lambda: _bench("chunk").chunk_markdown(read_jsonl("chunk.jsonl")),
}


def render(text: str, cache: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m["name"]
        if name not in GENERATORS:
            raise SystemExit(f"tables: unknown block {name!r}")
        if name not in cache:
            cache[name] = GENERATORS[name]().rstrip("\n") + "\n"
        return m.group(1) + cache[name] + m.group(4)

    return BLOCK.sub(sub, text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    rec = sub.add_parser("record", help="store a reproduce run's results.json as JSONL")
    rec.add_argument("results_json", type=Path)
    rec.add_argument("--command", required=True)
    rec.add_argument("--to", type=Path, required=True)
    ev = sub.add_parser("record-evaluate", help="store a raydetect evaluate run's results.json as JSONL")
    ev.add_argument("results_json", type=Path)
    ev.add_argument("--command", required=True)
    ev.add_argument("--bundle", required=True, help="what the evaluated bundle is, in words")
    ev.add_argument("--to", type=Path, required=True)
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if a generated block is out of date")
    a = ap.parse_args()
    if a.cmd == "record":
        record(a.results_json, a.command, a.to)
        return 0
    if a.cmd == "record-evaluate":
        record_evaluation(a.results_json, a.command, a.bundle, a.to)
        return 0
    cache: dict[str, str] = {}
    stale = []
    for doc in DOCS:
        path = ROOT / doc
        old = path.read_text()
        new = render(old, cache)
        if new != old:
            stale.append(doc)
            if not a.check:
                path.write_text(new)
    verb = "out of date" if a.check else "rewritten"
    print(f"tables: {', '.join(stale)} {verb}" if stale else "tables: every generated block matches its result file")
    return 1 if a.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
