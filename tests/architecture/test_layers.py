"""The layers of README's architecture: the service and the indexer stand on m5core alone, and never load torch."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("trainer", "catalog", "evaluation", "torch", "transformers", "deepspeed")


def _modules(package: str) -> list[str]:
    return sorted(f"{package}.{p.stem}" for p in (REPO / package).glob("*.py") if p.stem not in ("__init__", "__main__"))


@pytest.mark.parametrize("package", ["service", "indexer", "m5core"])
def test_package_imports_nothing_above_m5core_and_no_torch(package):
    """Every module of the package, imported in a fresh interpreter: which of the forbidden top-level packages got loaded."""
    mods = _modules(package) + (
        [f"m5core.{sub}.{p.stem}" for sub in ("stores", "events") for p in (REPO / "m5core" / sub).glob("*.py")] if package == "m5core" else []
    )
    code = (
        f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\n"
        f"print(sorted({{n.split('.')[0] for n in sys.modules}} & {set(FORBIDDEN)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"{package} loads {out.stdout.strip()}"


def test_the_check_sees_a_forbidden_import():
    """The probe itself: a module that loads catalog is reported."""
    code = "import importlib, sys\nimportlib.import_module('catalog.io')\nprint(sorted({n.split('.')[0] for n in sys.modules} & {'catalog'}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "['catalog']"


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages a file imports anywhere (module level or inside a function)."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", ["service", "indexer", "m5core"])
def test_no_file_imports_above_m5core_even_lazily(package):
    bad = {str(p.relative_to(REPO)): sorted(_imported_packages(p) & set(FORBIDDEN)) for p in (REPO / package).rglob("*.py")}
    assert {f: pkgs for f, pkgs in bad.items() if pkgs} == {}


def test_the_client_stands_on_httpx_and_numpy_alone():
    """`pip install m5[client]` gives httpx and numpy: m5client may import nothing of the server side."""
    stdlib = set(sys.stdlib_module_names)
    used = set().union(*(_imported_packages(p) for p in (REPO / "m5client").rglob("*.py")))
    assert used - stdlib - {"m5client"} == {"httpx", "numpy"}
