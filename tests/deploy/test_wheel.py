"""The package as users and images install it: a wheel, non-editable, in a fresh virtualenv.

An editable install (ours, under `make install`) finds any module in the checkout, so a package missing
from pyproject.toml's list would only show up in a deployed image. The fresh virtualenv borrows the
third-party dependencies of .venv (their site-packages directory on its path, not as a site directory,
so .venv's editable finder for m5 itself stays inactive) and runs from outside the checkout."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_installed_in_a_fresh_venv_runs_the_commands(tmp_path):
    # Built from a copy of the sources, as an image's `COPY . .` sees them: setuptools writes build/ beside them.
    src = tmp_path / "src"
    skip = (".git", ".venv", ".cache", ".m5", "build", "dist", "*.egg-info", "__pycache__", "tests", "docs", "benchmarks")
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*skip))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("m5-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, cwd=tmp_path)
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    (site / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    probe = "import m5core, service, m5client; print(m5core.__file__, service.__file__, m5client.__file__)"
    where = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert str(REPO) not in where.stdout  # the installed copy, not the checkout
    m5 = venv / "bin" / "m5"
    for argv in (["--help"], ["serve", "--help"], ["index", "run", "--help"], ["keys", "add", "--help"], ["loadtest", "--help"]):
        r = subprocess.run(
            [str(m5), *argv], capture_output=True, text=True, cwd=tmp_path, env={"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
        )
        assert r.returncode == 0, (argv, r.stderr[-2000:])
        assert "usage: m5" in r.stdout
    data = subprocess.run(
        [str(py), "-c", "from evaluation.harness import handwritten_dir; print((handwritten_dir() / 'queries.jsonl').is_file())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert data.stdout.strip() == "True"  # the hand-written set ships as package data
