"""Every script in examples/ and the README quickstart run top to bottom.

The gallery scripts (``plot_*.py``) run as sphinx-gallery runs them: from their
folder and without ``__file__``; they must print and draw at least one figure.
"""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(script, monkeypatch, capsys):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(sys, "argv", [str(script)])
    import matplotlib

    matplotlib.use("Agg")  # in case pyplot was imported with another backend
    import matplotlib.pyplot as plt

    plt.close("all")
    try:
        if script.name.startswith("plot_"):
            monkeypatch.chdir(script.parent)
            code = compile(script.read_text(), str(script), "exec")
            exec(code, {"__name__": "__main__"})
            assert plt.get_fignums(), f"{script.name} drew no figure"
        else:
            runpy.run_path(str(script), run_name="__main__")
        assert capsys.readouterr().out
    finally:
        plt.close("all")


def test_readme_quickstart_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1]
    code = quickstart.split("```python\n", 1)[1].split("```")[0]
    assert len(code.strip().splitlines()) <= 11
    exec(compile(code, "README.md", "exec"), {})
    assert float(capsys.readouterr().out) > 0.9
