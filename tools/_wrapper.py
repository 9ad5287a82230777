"""Shared by the tools/*.py wrappers: map OpenPCDet-style flags onto the ``pointwin`` command."""

from __future__ import annotations

import sys
from pathlib import Path

# run from a source checkout without installing: make the repository importable
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def translate(argv: list[str]) -> list[str]:
    """``--cfg_file X`` -> positional ``X``; ``--extra_tag``/``--batch_size`` are not pointwin flags."""
    out: list[str] = []
    config: str | None = None
    it = iter(argv)
    for arg in it:
        if arg == "--cfg_file":
            config = next(it, None)
        elif arg.startswith("--cfg_file="):
            config = arg.split("=", 1)[1]
        else:
            out.append(arg)
    return ([config] if config is not None else []) + out


def run(command: str, argv: list[str]) -> int:
    from pointwin.cli import main

    return main([command, *translate(argv)])
