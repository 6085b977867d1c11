"""Merge the LoRA of an AE-Adapt-V phase-3 run into its base weights: a plain megavg model folder.

    python tools/merge_lora.py RUN_DIR --out FOLDER [--base FOLDER] [--tag TAG]

Reads ``RUN_DIR/config.yaml`` (rank, alpha, and ``model.init`` as the default base) and the trainable
tensors of the ZeRO-3 checkpoint ``RUN_DIR/checkpoints/<latest|TAG>``; writes FOLDER atomically.
"""

import argparse
from pathlib import Path

from megavg.models import registry
from megavg.tasks.adapt_lora import Args, lora_scale, merge_lora
from megavg.train.config import load_config
from megavg.utils.errors import UserError, run_cli
from megavg.utils.schema import from_dict


def trained_tensors(checkpoints: Path, tag: str | None) -> dict:
    """The trainable parameters (fp32) of a complete DeepSpeed checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if not (checkpoints / "latest").is_file() and tag is None:
        raise UserError(f"{checkpoints}: no complete checkpoint (no 'latest')")
    tag = tag or (checkpoints / "latest").read_text().strip()
    if not (checkpoints / tag).is_dir():
        raise UserError(f"{checkpoints / tag}: no such checkpoint")
    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag, exclude_frozen_parameters=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", required=True)
    parser.add_argument("--base", help="base model folder (default: the run's model.init)")
    parser.add_argument("--tag", help="checkpoint tag (default: latest)")
    opts = parser.parse_args(argv)
    if not (opts.run_dir / "config.yaml").is_file():
        raise UserError(f"{opts.run_dir}: not a megavg run folder (no config.yaml)")
    cfg = load_config(opts.run_dir / "config.yaml")
    if cfg.task.name != "adapt_lora":
        raise UserError(f"{opts.run_dir}: task is {cfg.task.name!r}, not adapt_lora")
    base_dir = opts.base or cfg.model.init
    config = registry.read_config(base_dir)
    merged = merge_lora(
        registry.load_state_dict(base_dir),
        trained_tensors(opts.run_dir / "checkpoints", opts.tag),
        lora_scale(from_dict(Args, cfg.task.args, "task.args")),
    )
    registry.save_state(config["family"], config["args"], merged, opts.out)
    print(f"merged LoRA of {opts.run_dir} into {base_dir}: wrote {opts.out}")


if __name__ == "__main__":
    run_cli(main)
