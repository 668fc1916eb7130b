"""What every benchmark prints: the machine it ran on and a plain-text table."""

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version


def machine_summary():
    """One paragraph naming the CPU, cores, memory, BLAS and package versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        f"machine: {cpu}, {os.cpu_count()} cores, {memory_gib:.0f} GiB, "
        f"{platform.system()} {platform.machine()}",
        f"python {platform.python_version()}; " + ", ".join(_versions()),
    ]
    blas = _blas()
    if blas:
        lines.append(f"BLAS: {blas}")
    lines.append("command: " + " ".join([os.path.basename(sys.executable), *sys.argv]))
    return "\n".join(lines)


def _versions():
    for package in ("crdistance", "numpy", "scipy", "scikit-learn", "torch"):
        try:
            yield f"{package} {version(package)}"
        except PackageNotFoundError:
            continue


def _blas():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ""
    return "; ".join(
        f"{info['internal_api']} {info.get('version', '')} "
        f"({info.get('architecture', '?')}, {info['num_threads']} threads)"
        for info in threadpool_info()
        if info["user_api"] == "blas"
    )


def format_table(rows, columns):
    """Markdown table of ``rows`` (dicts) with the given ``columns`` (keys)."""
    cells = [[_format(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(c) for c in [col, *(r[i] for r in cells)])
              for i, col in enumerate(columns)]
    def line(values):
        padded = (v.ljust(w) for v, w in zip(values, widths, strict=True))
        return "| " + " | ".join(padded) + " |"
    return "\n".join([line(columns), line(["-" * w for w in widths]),
                      *(line(r) for r in cells)])


def _format(value):
    if value is None:  # not measured (e.g. pixel metrics without masks)
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
