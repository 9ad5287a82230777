#!/usr/bin/env python
"""Thin wrapper: ``python tools/create_data.py {nuscenes,waymo,kitti,synthetic} [options]`` ==
``pointwin create-data ...``. See ``pointwin create-data --help``."""

import sys

from _wrapper import run

if __name__ == "__main__":
    sys.exit(run("create-data", sys.argv[1:]))
