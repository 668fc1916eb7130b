"""The import rules of docs/architecture.md, checked against the code.

The table between the ``import-rules`` markers of docs/architecture.md says, for
each wing, which groups its modules may import at the top level and which only
inside a function. These tests parse every module of the package (without
importing it) and fail on an import the table does not allow, on a module no
row claims, on a circle of imports, and on a private name used across modules.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "crdistance"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

THIRD_PARTY = {
    "science": {"numpy", "scipy", "sklearn", "array_api_compat"},
    "torch": {"torch", "torchvision"},
    "pillow": {"PIL"},
    "onnx": {"onnx"},
    "onnxruntime": {"onnxruntime"},
    "matplotlib": {"matplotlib"},
    "cupy": {"cupy"},
    "faiss": {"faiss"},
    "dask": {"dask", "distributed"},
    "starlette": {"starlette", "multipart", "python_multipart"},
    "uvicorn": {"uvicorn"},
}
STDLIB = set(sys.stdlib_module_names)
COMPAT = "crdistance._sklearn_compat"
# Private by spelling, public by protocol: scikit-learn documents these for
# third-party estimators to define and read.
PROTOCOL = {"_parameter_constraints"}


def read_rules(text):
    """Rows of the rule table: {wing: (module patterns, top-level, lazy)}."""
    block = re.search(
        r"<!-- import-rules: start -->(.*?)<!-- import-rules: end -->", text, re.S
    )
    assert block, "docs/architecture.md has no import-rules table"
    rules = {}
    for line in block.group(1).strip().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        wing, modules, top, lazy = cells
        patterns = re.findall(r"`([^`]+)`", modules)

        def groups(cell):
            return {word.strip() for word in cell.split(",") if word.strip()}

        rules[wing] = (patterns, groups(top), groups(top) | groups(lazy))
    return rules


RULES = read_rules(ARCHITECTURE.read_text())


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def wing_of(name):
    """The row of the table that claims the module ``crdistance.<rest>``."""
    rest = name.removeprefix("crdistance").removeprefix(".") or "crdistance"
    for wing, (patterns, _, _) in RULES.items():
        for pattern in patterns:
            if pattern.endswith(".*"):
                if rest == pattern[:-2] or rest.startswith(pattern[:-1]):
                    return wing
            elif rest == pattern:
                return wing
    return None


def imports(path):
    """(imported module, names, lazy, line) for every import of a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    here = module_name(path)
    found = []

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name, [], inner, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                target = child.module or ""
                if child.level:
                    base = here.split(".")
                    base = base if is_package else base[:-1]
                    base = base[: len(base) - child.level + 1]
                    target = ".".join([*base, target] if target else base)
                names = [alias.name for alias in child.names]
                found.append((target, names, inner, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def group_of(imported):
    """The group of the table an imported module belongs to."""
    top = imported.split(".")[0]
    if top == "crdistance":
        return wing_of(imported) or f"unknown crdistance module {imported}"
    if top in STDLIB or top == "__future__":
        return "stdlib"
    for group, modules in THIRD_PARTY.items():
        if top in modules:
            return group
    return f"unlisted third-party package {top}"


def test_every_module_belongs_to_a_wing():
    unclaimed = [name for name in MODULES if wing_of(name) is None]
    assert not unclaimed, f"no row of docs/architecture.md claims {unclaimed}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_follow_the_rules(name):
    wing = wing_of(name)
    _, top_level, lazily = RULES[wing]
    broken = []
    for imported, names, lazy, line in imports(MODULES[name]):
        targets = [imported]
        if imported.startswith("crdistance"):
            # "from crdistance.wing import _module": the submodule is the target.
            targets += [f"{imported}.{n}" for n in names
                        if f"{imported}.{n}" in MODULES]
        for target in targets:
            group = group_of(target)
            allowed = lazily if lazy else top_level
            if group not in allowed:
                kind = "lazily" if lazy else "at the top level"
                broken.append(f"line {line}: {target} ({group}) {kind}")
    assert not broken, (
        f"{name} ({wing}) imports what docs/architecture.md does not allow: "
        f"{broken}"
    )


def edges():
    """Import edges between crdistance's own modules, lazy ones included."""
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for imported, names, _, _ in imports(path):
            if not imported.startswith("crdistance"):
                continue
            submodules = {f"{imported}.{n}" for n in names
                          if f"{imported}.{n}" in MODULES}
            # "from crdistance.wing import _module" imports the module, and the
            # wing's __init__ only if it also imports other names from it.
            only_submodules = names and len(submodules) == len(names)
            targets = set() if only_submodules or imported not in MODULES else {
                imported
            }
            targets |= submodules
            graph[name] |= targets - {name}
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == "open":
                return stack[stack.index(successor):] + [successor]
            if successor not in state:
                cycle = visit(successor)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_circle():
    cycle = find_cycle(edges())
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_cycle_finder_finds_a_planted_circle():
    graph = edges()
    graph["crdistance._array_api"] = graph["crdistance._array_api"] | {
        "crdistance._detector"
    }
    assert find_cycle(graph) is not None


def own_names(tree):
    """Names a module defines: its functions, classes, assignments and the
    attributes its methods set on ``self``; reading these is not reaching in."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def private_uses(path):
    """Private names of other modules that a module imports or reads."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    own = own_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                if module == package and f"{module}.{name}" in MODULES:
                    continue  # a private module of the module's own wing
                found.append(f"line {node.lineno}: from {module} import {name}")
            if module.startswith("sklearn") and "._" in f".{module}":
                found.append(f"line {node.lineno}: from {module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sklearn") and "._" in f".{alias.name}":
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute):
            attribute = node.attr
            if (not attribute.startswith("_") or attribute.startswith("__")
                    or attribute in own | PROTOCOL):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls"}:
                continue
            if isinstance(owner, ast.Call) and getattr(owner.func, "id", "") in {
                "super", "type"
            }:
                continue
            found.append(f"line {node.lineno}: .{attribute}")
    return found


@pytest.mark.parametrize("name", sorted(set(MODULES) - {COMPAT}))
def test_no_private_name_of_another_module(name):
    uses = private_uses(MODULES[name])
    assert not uses, (
        f"{name} uses private names of other modules (give the owner a "
        f"documented attribute, or go through {COMPAT}): {uses}"
    )


def test_private_scikit_learn_names_live_in_the_compat_module():
    assert private_uses(MODULES[COMPAT]), (
        f"{COMPAT} no longer uses a private scikit-learn name: "
        "test_no_private_name_of_another_module now covers it"
    )


def test_rule_checker_flags_a_forbidden_import(tmp_path, monkeypatch):
    """The checks fail on the imports they exist to catch."""
    planted = tmp_path / "crdistance" / "_detector.py"
    planted.parent.mkdir()
    planted.write_text("import torch\nfrom crdistance.cli import main\n"
                       "from sklearn.base import _fit_context\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = imports(planted)
    groups = {group_of(target) for target, _, _, _ in found}
    assert {"torch", "cli"} <= groups
    assert not groups <= RULES["core"][1]
    assert private_uses(planted)


def test_the_library_imports_neither_torch_nor_onnx_nor_the_cli():
    """``import crdistance`` and every wing without torch stay light: the core
    and the leaves never import torch, onnx or the command line."""
    light = ["crdistance", "crdistance.baselines", "crdistance.datasets",
             "crdistance.exceptions", "crdistance.export", "crdistance.maps",
             "crdistance.metrics", "crdistance.model_selection",
             "crdistance.persistence"]
    code = (
        "import importlib, sys\n"
        f"for name in {light!r}:\n"
        "    importlib.import_module(name)\n"
        "from crdistance import CRDetector, CRDetectorCV, LocalCRDetector\n"
        "heavy = [m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', "
        "'crdistance.cli', 'crdistance.featurizer') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=ROOT,
    )
    assert result.stdout.strip() == ""


def test_patch_featurizer_is_reached_lazily_from_the_top_level():
    import crdistance
    from crdistance.featurizer import PatchFeaturizer

    assert crdistance.PatchFeaturizer is PatchFeaturizer
    assert "PatchFeaturizer" in dir(crdistance)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        crdistance.NoSuchName  # noqa: B018
