"""mkdocs hook: a source tree for the API reference in which the parts sit under segstream/.

The repository keeps ``shared/``, ``training/`` and ``services/`` at its top level and installs
them as ``segstream.shared`` etc. through setuptools ``package-dir``; griffe (behind
mkdocstrings) finds packages by their folders and cannot follow that mapping. This hook links
the folders into ``build/api-src/segstream/`` before the build, and ``mkdocs.yml`` points
mkdocstrings' ``paths`` there, so the modules are read statically, not imported.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TREE = REPO / "build" / "api-src" / "segstream"
# Import name below segstream -> repository path.
PARTS = {"shared": "shared", "training": "training", "services": "services", "config": "config"}


def link_tree() -> None:
    TREE.mkdir(parents=True, exist_ok=True)
    links = {name: REPO / path for name, path in PARTS.items()}
    links.update({p.name: p for p in (REPO / "segstream").glob("*.py")})
    for name, target in links.items():
        link = TREE / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)


# At import: mkdocs imports hooks while it loads mkdocs.yml, before mkdocstrings resolves its
# `paths` (a missing folder would be dropped from them silently).
link_tree()
