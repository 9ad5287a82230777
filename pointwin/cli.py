"""The ``pointwin`` command."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointwin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="train and evaluate a small detector on synthetic scenes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        import torch

        from pointwin.structures import Points

        pts = Points.from_list([torch.randn(100, 4)])
        print(f"pointwin is installed; {len(pts)} points in a batch of {pts.batch_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
