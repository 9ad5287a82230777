"""Shared by the tools/*.py wrappers: map OpenPCDet-style flags onto the ``pointwin`` command.

OpenPCDet's common flags are translated (each translation is printed, so the pointwin spelling is learnt);
the ones with no pointwin meaning stop with the pointwin equivalent named.
"""

from __future__ import annotations

import sys
from pathlib import Path

# run from a source checkout without installing: make the repository importable
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: OpenPCDet flag -> (pointwin spelling with {} for the value, commands it applies to)
VALUE_FLAGS = {
    "--batch_size": {"train": "--set train.batch_size={}", "test": "--set train.eval_batch_size={}"},
    "--epochs": {"train": "--set train.epochs={}"},
    "--workers": {"train": "--set train.num_workers={}", "test": "--set train.num_workers={}"},
    "--ckpt": {"train": "--resume {}", "test": "--ckpt {}"},
    "--pretrained_model": {"train": "--load-from {}"},
    "--max_ckpt_save_num": {"train": "--set train.keep_ckpts={}"},
    "--ckpt_save_interval": {"train": "--set train.ckpt_every={}"},
}
#: OpenPCDet flags without a value that pointwin expresses otherwise
SWITCHES = {"--sync_bn": {"train": "--set train.sync_bn=true"},
            "--fix_random_seed": {"train": "", "test": ""}}  # pointwin is always seeded (--seed, default 0)
#: flags pointwin has no use for: what to do instead
REFUSED = {
    "--launcher": "launch with torchrun (tools/dist_train.sh NUM_PROCS CONFIG); pointwin reads its environment",
    "--tcp_port": "torchrun --master_port PORT",
    "--local_rank": "torchrun sets LOCAL_RANK itself",
    "--eval_all": "run pointwin test once per checkpoint (--ckpt)",
    "--eval_tag": "pointwin test writes each checkpoint's results to its own folder",
    "--set_cfgs": "--set KEY=VALUE (repeatable)",
    "--start_epoch": "--resume auto continues at the right epoch",
    "--num_epochs_to_eval": "pointwin test --ckpt for each checkpoint",
    "--save_to_file": "pointwin test --out FILE",
}


class FlagError(SystemExit):
    """An OpenPCDet flag that pointwin cannot take (exit code 2, message on stderr)."""


def translate(argv: list[str], command: str = "train", note=None) -> list[str]:
    """``--cfg_file X`` -> positional ``X``, OpenPCDet flags -> pointwin flags (see the tables above).

    ``--extra_tag T`` becomes ``--work-dir work_dirs/<config name>/T`` (OpenPCDet's output/<cfg>/<tag>).
    """
    note = note or (lambda text: print(text, file=sys.stderr))
    out: list[str] = []
    config: str | None = None
    extra_tag: str | None = None
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, v = arg.partition("=")
        if name in VALUE_FLAGS or name in ("--cfg_file", "--extra_tag"):
            if not eq:
                if i + 1 >= len(args):
                    raise FlagError(f"tools/{command}.py: {name} needs a value")
                i += 1
                v = args[i]
        if name == "--cfg_file":
            config = v
        elif name == "--extra_tag":
            extra_tag = v
        elif name in VALUE_FLAGS:
            rule = VALUE_FLAGS[name].get(command)
            if rule is None:
                raise FlagError(f"tools/{command}.py: {name} has no meaning for pointwin {command}")
            out += rule.format(v).split(" ", 1)
            note(f"tools/{command}.py: {name} {v} -> {rule.format(v)}")
        elif name in SWITCHES:
            rule = SWITCHES[name].get(command)
            if rule is None:
                raise FlagError(f"tools/{command}.py: {name} has no meaning for pointwin {command}")
            if rule:
                out += rule.split(" ", 1)
            note(f"tools/{command}.py: {name} -> {rule or '(nothing: pointwin runs are seeded by --seed)'}")
        elif name in REFUSED:
            raise FlagError(f"tools/{command}.py: OpenPCDet's {name} is not a pointwin flag; instead: {REFUSED[name]}")
        else:
            out.append(arg)
        i += 1
    if extra_tag is not None:
        if config is None and not any(a.endswith((".yaml", ".yml")) for a in out):
            raise FlagError(f"tools/{command}.py: --extra_tag needs the config (--cfg_file)")
        stem = Path(config if config is not None else next(a for a in out if a.endswith((".yaml", ".yml")))).stem
        out += ["--work-dir", str(Path("work_dirs") / stem / extra_tag)]
        note(f"tools/{command}.py: --extra_tag {extra_tag} -> --work-dir work_dirs/{stem}/{extra_tag}")
    return ([config] if config is not None else []) + out


def run(command: str, argv: list[str]) -> int:
    from pointwin.cli import main

    try:
        translated = translate(argv, command)
    except FlagError as e:
        print(e, file=sys.stderr)
        return 2
    return main([command, *translated])
