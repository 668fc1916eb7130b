"""Sphinx configuration of the crdistance documentation.

Build (offline; warnings are errors):

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python docs/check_links.py docs/_build/html

The gallery executes ``examples/plot_*.py``; they read the MobileNetV2 weights
from ``$TORCH_HOME`` (default: ``../shared/weights`` beside the repository)
and the data in ``../shared/data``.
"""

import importlib.util
import os
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent
SHARED = DOCS.parent.parent / "shared"
os.environ.setdefault("TORCH_HOME", str(SHARED / "weights"))
os.environ.setdefault("MPLBACKEND", "Agg")

import crdistance  # noqa: E402

# Tables made from the committed benchmark results (docs/results/*.csv), written
# to docs/_generated/ and included by the pages that quote them.
_spec = importlib.util.spec_from_file_location("result_tables",
                                               DOCS / "results" / "tables.py")
_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tables)
_tables.generate(DOCS / "_generated")

# -- Project ------------------------------------------------------------------

project = "crdistance"
author = "crdistance developers"
copyright = "crdistance developers"
release = crdistance.__version__
version = re.match(r"\d+\.\d+", release).group()

# -- General ------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "_generated", "results"]
# The existing pages are Markdown read by MyST; ``[text](page.md#section)``
# links resolve to headings up to level 3.
myst_heading_anchors = 3
# Unmarked literal blocks (formulas, shell output) are shown as plain text.
highlight_language = "none"

# -- API reference (autosummary, autodoc, numpydoc) ---------------------------

autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Every check except: extended summaries and See Also sections (optional),
# Examples on methods (tests/test_docstrings.py requires them on every public
# class and function), "name : type" return lines (scikit-learn's style) and
# capitalised parameter descriptions.
numpydoc_validation_checks = {"all", "ES01", "SA01", "EX01", "RT02", "PR08"}

# Class pages list the members crdistance defines and these from scikit-learn;
# other inherited members (scikit-learn's set_output and metadata-routing
# setters, Sequence.index and .count) are documented by their libraries.
INHERITED_MEMBERS_KEPT = {"fit_predict", "fit_transform", "get_params", "set_params"}


def skip_foreign_members(app, what, name, obj, skip, options):
    function = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj
    module = getattr(function, "__module__", None)
    if module is None or module.split(".")[0] == "crdistance":
        return None
    return name not in INHERITED_MEMBERS_KEPT or None


def setup(app):
    app.connect("autodoc-skip-member", skip_foreign_members)


# -- Gallery (sphinx-gallery) --------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # Only plot_*.py run; other scripts (distributed_fit.py starts a Dask
    # cluster) are shown without output.
    "filename_pattern": r"/plot_",
    "doc_module": ("crdistance",),
    "reference_url": {"crdistance": None},
    "backreferences_dir": "generated/backreferences",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
}

# -- HTML ----------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"crdistance {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_show_sourcelink = False
