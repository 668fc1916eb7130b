"""docs/check_links.py finds broken internal links and anchors, and only those."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "check_links.py"


def load_checker():
    spec = importlib.util.spec_from_file_location("check_links", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_site(root, page_html):
    (root / "api").mkdir(parents=True)
    (root / "index.html").write_text(page_html)
    (root / "api" / "detector.html").write_text(
        '<h1 id="crdetector">CRDetector</h1><a name="legacy"></a>'
        '<a href="../index.html#top">home</a>'
    )
    (root / "_static").mkdir()
    (root / "_static" / "macros.html").write_text("<link href=\"{{ pathto('x') }}\">")


def test_a_clean_site_passes(tmp_path, capsys):
    checker = load_checker()
    write_site(tmp_path, (
        '<p id="top"><a href="api/detector.html#crdetector">a</a>'
        '<a href="api/detector.html#legacy">b</a><a href="#top">c</a>'
        '<a href="api/">d</a><a href="https://example.org/missing#x">e</a>'
        '<a href="mailto:someone@example.org">f</a><img src="data:image/png;base64,">'
        '<link rel="preconnect" href="//fonts.example.org"></p>'
    ))
    (tmp_path / "api" / "index.html").write_text("<p>api</p>")
    assert checker.main([str(tmp_path)]) == 0
    assert "0 broken internal link(s) in 3 pages" in capsys.readouterr().out


def test_missing_files_anchors_and_escapes_are_reported(tmp_path, capsys):
    checker = load_checker()
    write_site(tmp_path, (
        '<p id="top"><a href="api/missing.html">a</a>'
        '<a href="api/detector.html#nowhere">b</a><a href="#bottom">c</a>'
        '<img src="_images/plot.png"><a href="../outside.html">d</a></p>'
    ))
    problems = {(url, problem) for _, _, url, problem in checker.broken_links(tmp_path)}
    assert problems == {
        ("api/missing.html", "no such file"),
        ("api/detector.html#nowhere", "no anchor #nowhere"),
        ("#bottom", "no anchor #bottom"),
        ("_images/plot.png", "no such file"),
        ("../outside.html", "points outside the build"),
    }
    assert checker.main([str(tmp_path)]) == 1
    assert "5 broken internal link(s)" in capsys.readouterr().out
