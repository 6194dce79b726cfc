"""The package's shape: imports flow one way, from a layer to the layers beneath it, and
every caller reads a model through its protocol.

The rule is stated in ``cvae/__init__.py``; this test walks every module's imports (the
source, not a running interpreter) and fails on an upward import, on an import cycle
between modules, and on a cvae import hidden inside a function. It also walks every module
outside ``cvae/models/`` (the package, the launchers, the benchmarks) and fails where one
asks which class a model is — an ``isinstance`` of a class from ``cvae.models`` — or falls
back on a model's attribute (``getattr(model…, name, default)``, ``hasattr(model…, name)``):
the difference belongs behind a method of the model (``cvae.models.protocol``).
"""

import ast
import pathlib

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cvae"

# Bottom first; a module may import its own layer's modules and those of lower layers.
LAYERS = [
    {"errors", "faults", "parallel", "progress", "schema"},
    {"models"},
    {"config"},
    {"data"},
    {"runs"},
    {"evaluation"},
    {"samplers"},
    {"training"},
    {"analysis"},
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _unit(module: str) -> str | None:
    """``cvae.data.sources`` → ``data``; the package itself → None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _resolve(name: str) -> str:
    """The module an imported name lives in (``cvae.data.load`` → ``cvae.data``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(path: pathlib.Path) -> tuple[set[str], list[str]]:
    """(cvae modules imported at module level, cvae imports inside functions)."""
    tree = ast.parse(path.read_text())
    top, hidden = set(), []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name.split(".")[0] == "cvae"]
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "cvae"
        ):
            return [_resolve(f"{node.module}.{a.name}") for a in node.names]
        return []

    for node in tree.body:
        top.update(_resolve(t) for t in targets(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                hidden += [f"{path.name}:{inner.lineno} {t}" for t in targets(inner)]
    return top, hidden


GRAPH = {module: _imports(path) for module, path in MODULES.items()}


def test_every_module_belongs_to_a_layer():
    units = {_unit(m) for m in MODULES} - {None}
    assert units <= set(LEVEL), f"modules outside the layers: {sorted(units - set(LEVEL))}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _unit(m)))
def test_imports_go_down_the_layers(module):
    level = LEVEL[_unit(module)]
    upward = [
        target for target in GRAPH[module][0] if _unit(target) and LEVEL[_unit(target)] > level
    ]
    assert not upward, f"{module} (layer {_unit(module)}) imports from above: {upward}"


def test_no_cvae_import_hides_inside_a_function():
    hidden = [line for module in MODULES for line in GRAPH[module][1]]
    assert not hidden, f"function-local cvae imports: {hidden}"


def test_no_import_cycle_between_modules():
    edges = {m: {t for t in GRAPH[m][0] if t in MODULES and t != m} for m in MODULES}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail(f"import cycle: {' → '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walker itself: a models module importing training is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from cvae.training import steps\n\ndef f():\n    from cvae import data\n")
    top, hidden = _imports(bad)
    assert top == {"cvae.training.steps"}
    assert hidden == ["bad.py:4 cvae.data"]


def _model_type_checks(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """``file:line`` of each ``isinstance`` of a ``cvae.models`` class and each attribute
    fallback on a model (an object whose expression names a model) in a source file."""
    tree = ast.parse(path.read_text())
    modules, classes = set(), set()  # local names bound to cvae.models modules and classes
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cvae.models" or node.module.startswith("cvae.models."):
                for alias in node.names:
                    name = alias.asname or alias.name
                    full = f"{node.module}.{alias.name}"
                    is_module = full in MODULES or alias.name[:1].islower()
                    (modules if is_module else classes).add(name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cvae.models"):
                    modules.add(alias.asname or alias.name.split(".")[0])

    def names_a_model_class(node) -> bool:
        if isinstance(node, ast.Tuple):
            return any(names_a_model_class(e) for e in node.elts)
        if isinstance(node, ast.Name):
            return node.id in classes
        root = node
        while isinstance(root, ast.Attribute):
            root = root.value
        return (
            isinstance(node, ast.Attribute)
            and isinstance(root, ast.Name)
            and (root.id in modules or ast.unparse(node).startswith("cvae.models."))
        )

    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        where = f"{path.relative_to(root)}:{node.lineno} {ast.unparse(node)}"
        if node.func.id == "isinstance" and len(node.args) == 2:
            if names_a_model_class(node.args[1]):
                found.append(where)
        elif (node.func.id == "getattr" and len(node.args) == 3) or node.func.id == "hasattr":
            if "model" in ast.unparse(node.args[0]).lower():
                found.append(where)
    return found


CALLERS = sorted(
    path
    for folder in ("cvae", "experiments", "benchmarks")
    for path in (ROOT / folder).rglob("*.py")
    if not path.is_relative_to(PACKAGE / "models")
)


def test_no_caller_asks_which_class_a_model_is():
    found = [line for path in CALLERS for line in _model_type_checks(path)]
    assert not found, f"model type checks outside cvae/models/: {found}"


def test_the_checker_sees_a_model_type_check(tmp_path):
    """The walker itself: isinstance of a models class (imported either way) and an
    attribute fallback on a model are reported; other isinstance and getattr calls are not."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from cvae.models import hierarchy\n"
        "from cvae.models.vae import VAE\n"
        "import cvae.models.residual_hierarchy\n"
        "def f(model, run, x):\n"
        "    a = isinstance(model, hierarchy.Hierarchy)\n"
        "    b = isinstance(model, (int, VAE))\n"
        "    c = getattr(run.model, 'layer_dims', ())\n"
        "    d = hasattr(model, 'descend')\n"
        "    e = isinstance(x, cvae.models.residual_hierarchy.ResidualTopDownVAE)\n"
        "    return isinstance(x, int), getattr(x, 'shape', None), getattr(model, 'name')\n"
    )
    lines = [line.split(" ", 1)[0] for line in _model_type_checks(bad, tmp_path)]
    assert lines == ["bad.py:5", "bad.py:6", "bad.py:7", "bad.py:8", "bad.py:9"]
