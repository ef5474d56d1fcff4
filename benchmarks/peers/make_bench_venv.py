"""Make .venv-bench: infinity-emb with the optimum (ONNX Runtime) engine, apart from the project's venv.

    python benchmarks/peers/make_bench_venv.py [--main-venv .venv] [--out .venv-bench]

infinity-emb 0.0.78 pins numpy<2, transformers<4.58 and uvicorn<0.33, which would downgrade what the
service runs on, so it gets its own venv. optimum imports torch at module level although the ONNX path
never runs it; rather than download a second multi-GB torch, the new venv reads the project venv's
site-packages last (a .pth file), so its own pins win and only what it lacks (torch) comes from there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PINS = ["infinity-emb[server]==0.0.78", "transformers>=4.36,<4.58", "onnx", "onnxruntime", "numpy<2", "huggingface_hub<1"]
NO_DEPS = ["optimum==2.1.0", "optimum-onnx==0.1.0"]  # their torch requirement is met from the main venv


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--main-venv", type=Path, default=REPO / ".venv", help="the project venv (must have torch)")
    ap.add_argument("--out", type=Path, default=REPO / ".venv-bench", help="venv to create")
    args = ap.parse_args()
    main_sp = site_packages(args.main_venv.resolve())
    if not (main_sp / "torch").is_dir():
        raise SystemExit(f"--main-venv: no torch under {main_sp} (install the project with the train extra first)")
    if not (args.out / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(args.out)], check=True)
    pip = [str(args.out / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + PINS, check=True)
    subprocess.run(pip + ["--no-deps"] + NO_DEPS, check=True)
    (site_packages(args.out) / "zz_m5_torch_from_main_venv.pth").write_text(f"{main_sp}\n")
    subprocess.run(
        [
            str(args.out / "bin" / "python"),
            "-c",
            "import torch, numpy; from optimum.onnxruntime import ORTModelForFeatureExtraction; "
            "import infinity_emb; print('infinity', infinity_emb.__version__, 'numpy', numpy.__version__)",
        ],
        check=True,
    )
    print(f"ready: {args.out}/bin/infinity_emb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
