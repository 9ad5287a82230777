#!/usr/bin/env python
"""Thin wrapper: ``python tools/test.py CONFIG --ckpt CKPT [options]`` == ``pointwin test ...``.

OpenPCDet's ``--cfg_file CONFIG`` spelling is accepted too. See ``pointwin test --help``.
"""

import sys

from _wrapper import run

if __name__ == "__main__":
    sys.exit(run("test", sys.argv[1:]))
