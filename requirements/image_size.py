"""Estimate the segstream image's installed Python dependencies without a Docker engine.

For every pin of a lock file (``requirements/image.txt``), the installed size is the sum of
the file sizes in the distribution's ``RECORD`` (as installed in this environment, or read
from a wheel given with ``--wheel``: the zip members' uncompressed sizes). The image adds the
``python:3.11-slim`` base and ``libgomp1`` (not measured here: see docs/guide/operations.md).

    python requirements/image_size.py requirements/image.txt --wheel DIST=PATH.whl ...

Prints one JSON object: per distribution its bytes, the total and what was not found.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import sys
import zipfile
from pathlib import Path


def pins(lock: Path) -> dict[str, str]:
    out = {}
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if m:
            out[re.sub(r"\[.*\]", "", m.group(1)).lower().replace("_", "-")] = m.group(2)
    return out


def installed_bytes(name: str) -> int | None:
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    return sum((f.size or 0) for f in dist.files or [])


def wheel_bytes(path: Path) -> int:
    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lock", type=Path)
    ap.add_argument("--wheel", action="append", default=[], metavar="DIST=PATH")
    args = ap.parse_args(argv)
    wheels = dict(w.split("=", 1) for w in args.wheel)
    sizes, missing = {}, []
    for name in pins(args.lock):
        n = wheel_bytes(Path(wheels[name])) if name in wheels else installed_bytes(name)
        if n is None:
            missing.append(name)
        else:
            sizes[name] = n
    json.dump(
        {
            "lock": str(args.lock),
            "total_bytes": sum(sizes.values()),
            "largest": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:8]),
            "missing": missing,
        },
        sys.stdout,
        indent=2,
    )
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
