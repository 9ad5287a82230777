"""``pointwin demo --quick`` end to end: synthetic data -> training -> evaluation -> table and pictures.

This is the slowest test of the suite (about 1-2 minutes on 2 CPU cores), so it is marked slow.
"""

from __future__ import annotations

import json

import pytest

from pointwin.cli import main
from pointwin.demo import DEFAULT_CONFIG, demo_config

#: the quick run trains for about a minute: it must clearly beat chance, not reach the full demo's 0.6
QUICK_AP_FLOOR = 0.05


def test_demo_config_quick_overrides():
    full, quick = demo_config(), demo_config(quick=True)
    assert quick.train.epochs < full.train.epochs
    assert quick.data.train.num_frames < full.data.train.num_frames
    assert full.demo.target_metric and full.demo.target_value == pytest.approx(0.6)
    # user overrides go on top of the quick ones
    assert demo_config(quick=True, overrides=["train.epochs=1"]).train.epochs == 1
    assert DEFAULT_CONFIG.is_file()


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    wd = tmp_path / "demo"
    assert main(["demo", "--quick", "--work-dir", str(wd), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert str(wd / "metrics.md") in out and "training_curves.png" in out

    metrics = json.loads((wd / "metrics.json").read_text())
    target = demo_config(quick=True).demo.target_metric
    assert target in metrics, sorted(metrics)
    assert metrics[target] > QUICK_AP_FLOOR, metrics
    table = (wd / "metrics.md").read_text()
    assert target in table

    pictures = sorted((wd / "bev").glob("*.png"))
    assert len(pictures) == demo_config(quick=True).demo.pictures
    for png in [*pictures, wd / "training_curves.png"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000  # a real picture, not an empty canvas
    assert (wd / "latest.pth").is_file() and (wd / "log.jsonl").is_file()
