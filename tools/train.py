#!/usr/bin/env python
"""Thin wrapper: ``python tools/train.py CONFIG [options]`` == ``pointwin train CONFIG [options]``.

OpenPCDet's ``--cfg_file CONFIG`` and common flags (``--batch_size``, ``--epochs``, ``--workers``,
``--ckpt``, ``--pretrained_model``, ``--extra_tag``, ...) are translated and the translation printed;
those with no pointwin meaning stop with the pointwin way named (tools/_wrapper.py). See ``pointwin train --help``.
"""

import sys

from _wrapper import run

if __name__ == "__main__":
    sys.exit(run("train", sys.argv[1:]))
