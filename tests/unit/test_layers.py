"""The package's layering, checked on the source (AST, fast, no heavy imports) and on a real import.

(a) The math layer (models, methods, metrics, masks, optim, evaluation) is plain PyTorch / NumPy:
    it imports none of ray, mlflow, kfp, boto3, neither directly nor through another lethe module,
    neither at module level nor inside a function.
(b) There is no import cycle anywhere in lethe/.
(c) No module in lethe/ is over 600 lines and no function or method over 80 (from its `def` line to
    its last line, docstring included: `end_lineno - lineno + 1` in the AST).
(d) A KFP task's first import (the KFP steps, the pipeline's lifecycle) loads no torch, models or
    evaluation: the training code comes with the step that needs it.

Import graph used by (a) and (b): every `import` / `from ... import` statement in a module's AST, function
bodies included. `from lethe.x import y` is an edge to the module lethe.x.y when that is a module,
else to lethe.x; relative imports are resolved the same way. Importing lethe.x.y also runs the
package lethe/x/__init__.py, so that package is an edge too, unless it is a package of the importing
module itself (Python has already started it before the importing module runs). A package __init__
importing its own submodules is therefore no cycle; a submodule that imports names from its own
package's __init__ (`from lethe.x import name`) while that __init__ imports the submodule is one.
Imports under `if TYPE_CHECKING:` never run and are left out of the cycle check (they are how a
type-only dependency is kept out of the graph); the math layer may not name the forbidden packages
even there.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "lethe"
FORBIDDEN = ("ray", "mlflow", "kfp", "boto3")
# Modules (a package stands for itself and every module under it) that make up the math layer.
MATH_LAYER = (
    "lethe.models",
    "lethe.methods",
    "lethe.metrics",
    "lethe.masks",
    "lethe.optim",
    "lethe.evaluation",
)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
MISSING_HINT = {
    "lethe.optim": "lethe/optim.py is the training toolkit (optimisers, schedules, training and "
    "unlearning steps), renamed from lethe/training.py",
}


@dataclass(frozen=True)
class Import:
    target: str  # a module of the package, or the top-level name of an outside package
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement anywhere in the tree, with whether it sits under `if TYPE_CHECKING:`."""
    out: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def walk(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append((node, type_only))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                walk(child, True)
            for child in node.orelse:
                walk(child, type_only)
            return
        for child in ast.iter_child_nodes(node):
            walk(child, type_only)

    walk(tree, False)
    return out


class Sources:
    """The modules of one package on disk (`root`/`package`/...) and what each imports, from the AST."""

    def __init__(self, root: Path, package: str) -> None:
        self.root, self.package = root, package
        self.modules: dict[str, Path] = {}
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            self.modules[".".join(parts)] = path
        self._imports: dict[str, tuple[Import, ...]] = {}
        self._trees: dict[str, ast.Module] = {}

    def where(self, name: str) -> str:
        return str(self.modules[name].relative_to(self.root))

    def tree(self, name: str) -> ast.Module:
        if name not in self._trees:
            path = self.modules[name]
            self._trees[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        return self._trees[name]

    def _is_package(self, name: str) -> bool:
        return self.modules[name].name == "__init__.py"

    def _known(self, name: str) -> str:
        """The longest prefix of a dotted name that is a module (`import p.x.y` names one)."""
        while name not in self.modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    def _with_packages(self, importer: str, target: str) -> list[str]:
        """`target` and the packages above it that importing it runs, bar the importer's own."""
        own = importer if self._is_package(importer) else importer.rpartition(".")[0]
        parts = target.split(".")
        above = [".".join(parts[:i]) for i in range(1, len(parts))]
        return [p for p in above if not (own == p or own.startswith(p + "."))] + [target]

    def imports(self, name: str) -> tuple[Import, ...]:
        """What module `name` imports: own modules by module name, anything else by top-level name."""
        if name in self._imports:
            return self._imports[name]
        tree = self.tree(name)
        package = name if self._is_package(name) else name.rpartition(".")[0]
        found: list[Import] = []

        def add(target: str, line: int, type_only: bool) -> None:
            top = target.split(".")[0]
            if top != self.package:
                found.append(Import(top, line, type_only))
                return
            for t in self._with_packages(name, self._known(target)):
                if t != name:
                    found.append(Import(t, line, type_only))

        for node, type_only in _statements(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno, type_only)
                continue
            if node.level:  # relative: `from . import x` in p/q/m.py or p/q/__init__.py is p.q.x
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in self.modules else base, node.lineno, type_only)
        self._imports[name] = tuple(found)
        return self._imports[name]

    def graph(self) -> dict[str, list[str]]:
        """module -> the package's modules it imports at run time (type-only imports left out)."""
        return {
            m: sorted({i.target for i in self.imports(m) if i.target in self.modules and not i.type_only})
            for m in self.modules
        }

    def cycles(self) -> list[list[str]]:
        """Cycles as [a, b, ..., a]: find one, drop its closing edge, look again, until none is left."""
        graph = self.graph()
        found = []
        while (cycle := cycle_path(graph)) is not None:
            found.append(cycle)
            a, b = cycle[-2], cycle[-1]
            graph[a] = [t for t in graph[a] if t != b]
        return found

    def describe(self, cycle: list[str]) -> str:
        def lines(a: str, b: str) -> str:
            at = sorted({i.line for i in self.imports(a) if i.target == b and not i.type_only})
            return f"{self.where(a)}:{','.join(map(str, at))}"

        return f"{' -> '.join(cycle)}  ({', '.join(lines(a, b) for a, b in pairwise(cycle))})"


def cycle_path(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None; deterministic (sorted start nodes and edges)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(set(graph[node])):
            if colour[nxt] == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == white and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        colour[node] = black
        return None

    for start in sorted(graph):
        if colour[start] == white and (found := visit(start)) is not None:
            return found
    return None


def _functions(node: ast.AST, prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method under `node`, nested ones included, by dotted name (Class.method)."""
    out: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                out.append((name, child))
            out += _functions(child, name + ".")
        else:
            out += _functions(child, prefix)
    return out


def oversized(
    src: Sources, max_module: int = MAX_MODULE_LINES, max_function: int = MAX_FUNCTION_LINES
) -> list[str]:
    """Modules over `max_module` lines and functions / methods over `max_function`, as `path[:line] what`."""
    found = []
    for name, path in src.modules.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > max_module:
            found.append(f"{src.where(name)}: module of {lines} lines (at most {max_module})")
        for qualname, node in _functions(src.tree(name)):
            length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if length > max_function:
                found.append(
                    f"{src.where(name)}:{node.lineno} {qualname}: {length} lines (at most {max_function})"
                )
    return found


@cache
def lethe() -> Sources:
    return Sources(ROOT, PACKAGE)


def _layer_modules() -> list[str]:
    return [m for m in lethe().modules if any(m == r or m.startswith(r + ".") for r in MATH_LAYER)]


# -- (a) the math layer ----------------------------------------------------------------------------


def test_math_layer_modules_exist():
    missing = [root for root in MATH_LAYER if root not in lethe().modules]
    assert not missing, "math-layer modules missing: " + "; ".join(
        f"{m} ({MISSING_HINT.get(m, 'listed in MATH_LAYER')})" for m in missing
    )


def test_math_layer_imports_no_infrastructure_statically():
    src = lethe()
    layer = _layer_modules()
    assert layer, "no math-layer module found under lethe/"
    offences = set()
    for start in layer:
        # Follow lethe-internal imports transitively; `via` is the chain from the layer module.
        seen, todo = {start}, [(start, [start])]
        while todo:
            mod, via = todo.pop()
            for imp in src.imports(mod):
                if imp.target in FORBIDDEN:
                    offences.add(f"{' -> '.join(via)} imports {imp.target} ({src.where(mod)}:{imp.line})")
                elif imp.target in src.modules and imp.target not in seen:
                    seen.add(imp.target)
                    todo.append((imp.target, [*via, imp.target]))
    assert not offences, f"the math layer must not import {', '.join(FORBIDDEN)}:\n" + "\n".join(
        sorted(offences)
    )


def test_math_layer_imports_no_infrastructure_at_run_time():
    layer = _layer_modules()
    code = (
        "import importlib, sys\n"
        f"for name in {layer!r}:\n"
        "    importlib.import_module(name)\n"
        f"loaded = sorted(m for m in {FORBIDDEN!r} if m in sys.modules)\n"
        "assert not loaded, f'importing the math layer loaded {loaded}'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


# -- (b) no import cycles ----------------------------------------------------------------------------


def test_no_import_cycles():
    src = lethe()
    cycles = src.cycles()
    assert not cycles, f"{len(cycles)} import cycle(s) in lethe/:\n" + "\n".join(map(src.describe, cycles))


# -- (c) sizes ---------------------------------------------------------------------------------------


def test_module_and_function_sizes():
    found = oversized(lethe())
    assert not found, f"{len(found)} over the size limits in lethe/ (split them):\n" + "\n".join(found)


# -- (d) what a KFP task imports before its step ----------------------------------------------------


def test_a_kfp_task_imports_no_training_code_before_its_step():
    # Each KFP task is a process of its own: begin, split, promote and cleanup start with this import,
    # and torch with the models and the evaluation behind it took about 2 s of each task's start.
    # begin, split and cleanup never need torch: the MLflow tracker and their steps load without it.
    code = (
        "import sys\n"
        "import lethe.orchestration.kfp_steps, lethe.pipeline\n"
        "import lethe.tracking, lethe.pipeline.context, lethe.pipeline.split, lethe.pipeline.cleanup\n"
        "from lethe.pipeline import lifecycle\n"
        "loaded = sorted(m for m in ('torch', 'scipy.stats', 'lethe.models', 'lethe.evaluation') if m in sys.modules)\n"
        "assert not loaded, f'importing the KFP steps loaded {loaded}'\n"
        "assert callable(lifecycle.RUNNERS['evaluate']) and lifecycle.run_step is __import__('lethe.pipeline').pipeline.run_step\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


# -- the checker itself, on a made-up package --------------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Sources:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Sources(root, "pkg")


def test_cycle_finder_reports_the_path():
    assert cycle_path({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert cycle_path({"a": ["b"], "b": ["c"], "c": []}) is None
    assert cycle_path({"a": ["a"]}) == ["a", "a"]


def test_graph_resolution(tmp_path):
    src = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "from pkg.sub.a import f\n",
            "pkg/sub/a.py": "import os\nfrom pkg.sub.b import g\n\ndef f():\n    from . import c\n",
            "pkg/sub/b.py": "from ..top import h\nfrom . import c as _c\n",
            "pkg/sub/c.py": (
                "import ray.data\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import pkg.top\n"
            ),
            "pkg/top.py": "from pkg.sub import a, f\n",
        },
    )
    targets = {m: {i.target for i in src.imports(m)} for m in src.modules}
    # A submodule import is an edge to the submodule; the package's __init__ is not an edge back.
    assert targets["pkg.sub"] == {"pkg.sub.a"}
    assert targets["pkg.sub.a"] == {"os", "pkg.sub.b", "pkg.sub.c"}  # function-level import too
    assert targets["pkg.sub.b"] == {"pkg.top", "pkg.sub.c"}  # relative imports
    assert targets["pkg.sub.c"] == {"ray", "typing", "pkg.top"}
    # From outside, importing pkg.sub.a runs pkg/sub/__init__.py; `f` is a name of pkg.sub.
    assert targets["pkg.top"] == {"pkg.sub", "pkg.sub.a"}
    graph = src.graph()
    assert graph["pkg.sub.c"] == []  # outside packages and type-only imports are no edges
    # pkg.sub -> a -> b -> top -> pkg.sub (and top -> a directly).
    assert [c[0] for c in src.cycles()] == ["pkg.sub", "pkg.sub.a"]
    assert src.cycles()[0] == ["pkg.sub", "pkg.sub.a", "pkg.sub.b", "pkg.top", "pkg.sub"]


def test_submodule_importing_from_its_own_package_init(tmp_path):
    files = {"pkg/__init__.py": "from pkg.a import f\n", "pkg/b.py": "", "pkg/a.py": "from pkg.b import x\n"}
    assert _package(tmp_path / "fine", files).cycles() == []
    files["pkg/a.py"] = "from pkg import b, g\n"  # b: the submodule; g: a name of pkg/__init__.py
    assert _package(tmp_path / "cycle", files).cycles() == [["pkg", "pkg.a", "pkg"]]


def _function(name: str, lines: int, indent: str = "") -> str:
    """Source of a function `lines` long, its `def` line included (one line: a `def` for a nested one)."""
    return f"{indent}def {name}():\n" + "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 1))


def test_size_checker_names_the_offender(tmp_path):
    over = MAX_FUNCTION_LINES + 1
    src = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            # At both limits: nothing to report.
            "pkg/fine.py": (
                _function("f", MAX_FUNCTION_LINES) + "\n" * (MAX_MODULE_LINES - MAX_FUNCTION_LINES)
            ),
            "pkg/long.py": (
                "class C:\n    @property\n"  # the decorator is not the function's
                + _function("method", over, "    ")
                + _function("outer", 1)
                + _function("inner", over, "    ")
                + "\n" * 500
            ),
        },
    )
    assert oversized(src) == [
        f"pkg/long.py: module of {2 + 2 * over + 1 + 500} lines (at most {MAX_MODULE_LINES})",
        f"pkg/long.py:3 C.method: {over} lines (at most {MAX_FUNCTION_LINES})",
        f"pkg/long.py:{3 + over} outer: {over + 1} lines (at most {MAX_FUNCTION_LINES})",
        f"pkg/long.py:{4 + over} outer.inner: {over} lines (at most {MAX_FUNCTION_LINES})",
    ]
