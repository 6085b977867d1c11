"""Exported models carry runner-side layer settings: ``linear``/``attention`` ``auto``, FP8 off unless asked.

A training run's ``linear: te`` or ``fp8.enabled`` left in config.json makes the single-GPU runner refuse on
a machine without Transformer Engine, or run FP8 where the user expects bf16.
"""

from __future__ import annotations

import json
import shutil

from megavg.infer.export import main as export
from megavg.layers.config import Fp8Config, LayerConfig
from megavg.models import registry
from megavg.models.wan.args import Args

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
