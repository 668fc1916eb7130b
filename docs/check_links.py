"""Fail on broken internal links in built HTML documentation.

Usage: ``python docs/check_links.py [docs/_build/html]``

Every ``href`` and ``src`` of every ``.html`` file under the build folder that
points inside it (a relative URL, or a ``#fragment`` alone) must name a file
that exists and, when it has a fragment, an element with that ``id`` (or an
``<a name>``) in the target page. External URLs (``http:``, ``mailto:``, ...)
are not checked: the build is offline. Prints every broken link and exits with
1 if there is one.
"""

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

LINK_ATTRIBUTES = {"href", "src"}


class _PageParser(HTMLParser):
    """Collects the anchors a page defines and the links it makes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.anchors = set()
        self.links = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if attributes.get("id"):
            self.anchors.add(attributes["id"])
        if tag == "a" and attributes.get("name"):
            self.anchors.add(attributes["name"])
        if tag == "link" and attributes.get("rel") in {"preconnect", "dns-prefetch"}:
            return  # a host, not a file
        for name in sorted(LINK_ATTRIBUTES & attributes.keys()):
            if attributes[name]:
                self.links.append((self.getpos()[0], attributes[name]))


def _parse(path, cache):
    if path not in cache:
        parser = _PageParser()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = parser
    return cache[path]


def _pages(root):
    """The built pages; ``_static`` holds theme templates, not pages."""
    return sorted(
        page for page in root.rglob("*.html")
        if "_static" not in page.relative_to(root).parts
    )


def broken_links(root):
    """Return ``(page, line, url, problem)`` for every broken internal link."""
    root = Path(root).resolve()
    cache = {}
    problems = []
    for page in _pages(root):
        for line, url in _parse(page, cache).links:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith("//"):
                continue  # external (http:, https:, mailto:, data:, javascript:)
            target = page if not parts.path else (page.parent / unquote(parts.path))
            target = target.resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_relative_to(root):
                problems.append((page, line, url, "points outside the build"))
            elif not target.is_file():
                problems.append((page, line, url, "no such file"))
            elif parts.fragment and target.suffix == ".html":
                fragment = unquote(parts.fragment)
                if fragment not in _parse(target, cache).anchors:
                    problems.append((page, line, url, f"no anchor #{fragment}"))
    return problems


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else Path(__file__).parent / "_build" / "html")
    if not (root / "index.html").is_file():
        print(f"{root} holds no built HTML (no index.html); build the docs first.")
        return 1
    problems = broken_links(root)
    for page, line, url, problem in problems:
        print(f"{page.relative_to(root.resolve())}:{line}: {url}: {problem}")
    n_pages = len(_pages(root.resolve()))
    print(f"{len(problems)} broken internal link(s) in {n_pages} pages under {root}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
