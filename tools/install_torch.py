"""Make sure the current interpreter can import torch without pulling CUDA wheels on a CPU machine.

- torch already importable (for example a CUDA build): keep it.
- a CPU wheel in pip's find-links folders (PIP_FIND_LINKS / pip config): install that file.
- otherwise: install the CPU build from PyTorch's CPU index.

Usage: python tools/install_torch.py
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def _find_links() -> list[str]:
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, check=False).stdout
        for line in out.splitlines():
            if "find-links" in line:
                dirs += line.split("=", 1)[1].strip().strip("'\"").split()
    except OSError:
        pass
    return [d.removeprefix("file://") for d in dirs if d]


def main() -> int:
    if importlib.util.find_spec("torch") is not None:
        import torch

        print(f"torch {torch.__version__} already installed; keeping it")
        return 0
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in _find_links():
        wheels = sorted(glob.glob(os.path.join(folder, f"torch-*+cpu-{tag}-{tag}-*linux*x86_64.whl")))
        if wheels:
            _pip(wheels[-1])
            return 0
    _pip("torch>=2.4", "--index-url", CPU_INDEX)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
