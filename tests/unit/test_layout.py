"""The layout rules of raydetect/, checked on its source with the stdlib ``ast`` module.

* Algorithm layers (models, attacks, explain, detect) import no Ray; ``detect/ray_fit.py`` (the
  Ray Train fit) is the one exception.
* Layers import only downward: a module imports raydetect modules of a lower layer, or of its own
  package. So stages import algorithms, never the reverse, and nothing imports the CLI.
* No import cycles, counting function-local imports too.
* A function-local import of raydetect's own modules says why, in a comment (it should only
  ever avoid a heavy import).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "raydetect"
ALGORITHMS = ("models", "attacks", "explain", "detect")
RAY_EXCEPTIONS = {"raydetect.detect.ray_fit"}
# The pipeline, bottom to top. Equal layers may not import each other.
LAYER = {
    "errors": 0, "_ray_workers": 0,
    "registry": 0.5,  # names and metadata only: what config validates against
    "config": 1,
    "raydetect": 2, "images": 2, "store": 2, "resources": 2, "outputs": 2,
    "models": 3,
    "attacks": 4, "explain": 4,
    "detect": 5,
    "report": 6,
    "stages": 7,
    "submit": 8,
    "cli": 9,
    "__main__": 10,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str) -> str:
    """The raydetect module an import names (a ``from pkg import sub`` naming a submodule counts as it)."""
    parts = name.split(".")
    while parts:
        base = PKG.parent.joinpath(*parts)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    raise AssertionError(f"cannot resolve {name}")


def imports(path: Path) -> list[tuple[str, int, bool, bool]]:
    """(imported module, line, function-local?, has a comment?) for every import in a file."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    local_lines: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local_lines |= {n.lineno for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}

    def commented(lineno: int) -> bool:
        # The import's own line, or the first line of the run of imports it belongs to.
        i = lineno - 1
        while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")):
            i -= 1
        return "#" in lines[lineno - 1] or "#" in lines[i]

    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module.startswith("raydetect") else [node.module]
        for name in names:
            out.append((name, node.lineno, node.lineno in local_lines, commented(node.lineno)))
    return out


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def graph() -> dict[str, set[str]]:
    return {
        mod: {resolve(name) for name, *_ in imports(path) if name.split(".")[0] == "raydetect"} - {mod}
        for mod, path in MODULES.items()
    }


def layer(mod: str) -> int:
    parts = mod.split(".")
    return LAYER[parts[1] if len(parts) > 1 else parts[0]]


def package(mod: str) -> str:
    return mod.split(".")[1] if "." in mod else mod


def test_every_module_has_a_layer() -> None:
    for mod in MODULES:
        layer(mod)


@pytest.mark.parametrize("mod", [m for m in MODULES if package(m) in ALGORITHMS])
def test_algorithm_layers_import_no_ray(mod: str) -> None:
    if mod in RAY_EXCEPTIONS:
        return
    ray = [f"line {line}: {name}" for name, line, *_ in imports(MODULES[mod]) if name.split(".")[0] == "ray"]
    assert not ray, f"{mod} imports Ray: {ray}"


def test_layers_only_import_downward() -> None:
    wrong = [
        f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})"
        for mod, deps in graph().items()
        for dep in deps
        if package(dep) != package(mod) and layer(dep) >= layer(mod)
    ]
    assert not wrong, "\n".join(wrong)


def test_there_are_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(g[mod]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[mod] = 2

    for mod in sorted(g):
        if mod not in state:
            visit(mod, [mod])


def test_function_local_imports_of_raydetect_say_why() -> None:
    silent = [
        f"{mod}:{line} {name}"
        for mod, path in MODULES.items()
        for name, line, local, comment in imports(path)
        if local and name.startswith("raydetect") and not comment
    ]
    assert not silent, "function-local imports without a comment:\n" + "\n".join(silent)


def test_the_checks_catch_a_violation(tmp_path: Path) -> None:
    # The rules are only worth something if they can fail: a Ray import in an algorithm module,
    # an upward import, and a silent local import are each caught.
    bad = tmp_path / "bad.py"
    bad.write_text("import ray\nfrom raydetect.stages.runner import run_job\n\ndef f():\n    from raydetect.cli import app\n")
    found = imports(bad)
    assert ("ray", 1, False, False) in found
    assert ("raydetect.stages.runner.run_job", 2, False, False) in found
    assert ("raydetect.cli.app", 5, True, False) in found
    assert layer(resolve("raydetect.stages.runner.run_job")) > layer("raydetect.detect.bundle")
