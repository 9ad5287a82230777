#!/usr/bin/env python
"""Thin wrapper: ``python tools/train.py CONFIG [options]`` == ``pointwin train CONFIG [options]``.

OpenPCDet's ``--cfg_file CONFIG`` spelling is accepted too. See ``pointwin train --help``.
"""

import sys

from _wrapper import run

if __name__ == "__main__":
    sys.exit(run("train", sys.argv[1:]))
