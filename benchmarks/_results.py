"""Writing a benchmark's rows as CSV and JSON, with the machine they ran on."""

import csv
import json
import sys


def write_results(rows, out_dir, name, machine, **extra):
    """Write ``rows`` (dicts) to ``out_dir/name.csv`` and ``out_dir/name.json``.

    The JSON also holds the machine summary, the command line and ``extra``
    (e.g. the parsed arguments). Returns the two paths.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    csv_path, json_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    with open(csv_path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    record = {"machine": machine, "argv": sys.argv, **extra, "rows": rows}
    json_path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return csv_path, json_path
