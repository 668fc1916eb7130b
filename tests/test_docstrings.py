"""Every public class and function has a numpydoc Examples section that runs.

The public API is the ``__all__`` of each public module. The examples
themselves run as doctests (``--doctest-modules`` in pytest's ``addopts``);
this test makes sure there is one to run, and that it is not skipped.
"""

import importlib
import inspect

import pytest
from numpydoc.docscrape import NumpyDocString

PUBLIC_MODULES = [
    "crdistance",
    "crdistance.baselines",
    "crdistance.datasets",
    "crdistance.exceptions",
    "crdistance.export",
    "crdistance.featurizer",
    "crdistance.maps",
    "crdistance.metrics",
    "crdistance.model_selection",
    "crdistance.persistence",
    "crdistance.preprocessing",
]

# Public names that are neither classes nor functions, so have no docstring of
# their own to hold an example. Nothing else is exempt.
NOT_CALLABLE = {
    "crdistance.__version__": "a version string",
    "crdistance.persistence.FORMAT_VERSION": "an int constant (docs/security.md)",
    "crdistance.model_selection.DEFECT_KINDS": "a tuple of names",
    "crdistance.model_selection.FAINT_DEFECTS": "a dict of defect options",
}


def public_names():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            yield module_name, name


@pytest.mark.parametrize(
    ("module_name", "name"), list(public_names()), ids=lambda value: value
)
def test_public_object_has_a_running_example(module_name, name):
    obj = getattr(importlib.import_module(module_name), name)
    qualified = f"{module_name}.{name}"
    if qualified in NOT_CALLABLE:
        assert not (inspect.isclass(obj) or callable(obj)), (
            f"{qualified} is exempt as {NOT_CALLABLE[qualified]} but is callable"
        )
        return
    assert inspect.isclass(obj) or inspect.isfunction(obj), (
        f"{qualified} is neither a class nor a function: list it in NOT_CALLABLE "
        "with a reason"
    )
    examples = "\n".join(NumpyDocString(inspect.getdoc(obj) or "")["Examples"])
    assert ">>>" in examples, f"{qualified} has no numpydoc Examples section"
    assert "+SKIP" not in examples, f"{qualified} skips (part of) its example"


def test_exemptions_are_public():
    names = {f"{module}.{name}" for module, name in public_names()}
    assert set(NOT_CALLABLE) <= names
