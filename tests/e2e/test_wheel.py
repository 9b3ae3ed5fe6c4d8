"""The wheel: one top-level package, and a CLI that works outside the repository."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for word in ("DeprecationWarning", "BuildBackendWarning"):
        assert word not in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    (whl,) = out.glob("segstream-*.whl")
    return whl


def test_wheel_has_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        (tl,) = [n for n in names if n.endswith("top_level.txt")] or [None]
        assert top == {"segstream"}
        if tl:
            assert z.read(tl).decode().split() == ["segstream"]
        for f in (
            "segstream/config/flights.yaml",
            "segstream/config/prometheus/prometheus.yml",
            "segstream/shared/settings.py",
            "segstream/services/worker/loop.py",
        ):
            assert f in names, f


def test_installed_wheel_runs_outside_the_repository(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    # Dependencies come from this environment's site-packages through a .pth line; the package
    # itself only from the wheel (a .pth-added directory is not scanned for the editable finder).
    target = subprocess.run(
        [str(py), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(target) / "zz_deps.pth").write_text(site.getsitepackages()[0] + "\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "--quiet",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SEGSTREAM_CONFIG")}
    exe = env_dir / "bin" / "segstream"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), *args], cwd=empty, env=env, capture_output=True, text=True, timeout=300
        )

    where = subprocess.run(
        [str(py), "-c", "import segstream.shared as s; print(s.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert str(env_dir) in where.stdout, where.stdout + where.stderr
    assert run("--help").returncode == 0
    cfg = run("config")
    assert cfg.returncode == 0, cfg.stderr
    assert '"model": "flights"' in cfg.stdout
    ex = run("config", "--example", "flights")
    assert ex.returncode == 0 and ex.stdout == (REPO / "config" / "flights.yaml").read_text()
    bad = run("config", "--config", "nope.yaml")
    assert bad.returncode != 0 and "nope.yaml" in bad.stderr
