"""Exported models carry runner-side layer settings: ``linear``/``attention`` ``auto``, FP8 off unless asked.

A training run's ``linear: te`` or ``fp8.enabled`` left in config.json makes the single-GPU runner refuse on
a machine without Transformer Engine, or run FP8 where the user expects bf16.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megavg.infer.export import main as export
from megavg.infer.pipeline import open_pipeline
from megavg.layers.config import Fp8Config, LayerConfig
from megavg.models import registry
from megavg.models.wan.args import Args
from megavg.utils.errors import UserError

TRAINING = {"linear": "te", "attention": "flash", "fp8": {"enabled": True, "recipe": "current"}}


def test_runner_args_reset_backends_and_fp8_unless_kept():
    args = Args(layers=LayerConfig(linear="te", attention="flash", fp8=Fp8Config(enabled=True)))
    runner = registry.runner_args(args)
    assert (runner.layers.linear, runner.layers.attention, runner.layers.fp8.enabled) == (
        "auto",
        "auto",
        False,
    )
    kept = registry.runner_args(args, keep_fp8=True).layers
    assert (kept.linear, kept.fp8.enabled, kept.fp8.recipe) == ("auto", True, "current")


def test_exported_pipeline_runs_without_te_whatever_the_training_settings(tiny_parts, tmp_path):
    trained = tmp_path / "trained"
    shutil.copytree(tiny_parts["t2v"], trained)
    config = json.loads((trained / "config.json").read_text())
    config["args"]["layers"] = TRAINING  # as a phase-3 run on H100s would have written it
    (trained / "config.json").write_text(json.dumps(config))
    out = tmp_path / "pipe"
    export(
        [
            "--transformer",
            str(trained),
            "--vae",
            str(tiny_parts["vae"]),
            "--text-encoder",
            str(tiny_parts["text"]),
            "--dtype",
            "fp32",
            "--out",
            str(out),
        ]
    )  # fmt: skip  (reads back on CPU)
    layers = json.loads((out / "transformer" / "config.json").read_text())["args"]["layers"]
    assert (layers["linear"], layers["attention"], layers["fp8"]["enabled"]) == ("auto", "auto", False)


def test_encoder_entries_are_relative_so_the_tree_can_move(tiny_parts, tmp_path):
    """pipeline.json names a referenced encoder relative to the pipeline folder: moving the tree that holds
    both keeps the pipeline working; an old absolute entry still loads; a missing relative one is one line."""
    tree = tmp_path / "tree"
    shutil.copytree(tiny_parts["text"], tree / "text")
    args = ["--transformer", str(tiny_parts["t2v"]), "--vae", str(tiny_parts["vae"]), "--dtype", "fp32"]
    export([*args, "--text-encoder", str(tree / "text"), "--out", str(tree / "pipe")])
    manifest = json.loads((tree / "pipe" / "pipeline.json").read_text())
    assert manifest["text_encoder"] == "../text"
    moved = tmp_path / "elsewhere"
    (tree).rename(moved)
    pipe = open_pipeline(moved / "pipe")
    assert Path(pipe.component(pipe.manifest.text_encoder)).resolve() == (moved / "text").resolve()
    manifest["text_encoder"] = str((moved / "text").resolve())  # as exports before this change wrote it
    (moved / "pipe" / "pipeline.json").write_text(json.dumps(manifest))
    pipe = open_pipeline(moved / "pipe")
    assert Path(pipe.component(pipe.manifest.text_encoder)) == (moved / "text").resolve()
    shutil.rmtree(moved / "text")
    pipe.manifest.text_encoder = "../text"
    with pytest.raises(UserError, match="../text \\(relative to the pipeline folder\\) does not exist"):
        pipe.component(pipe.manifest.text_encoder)
