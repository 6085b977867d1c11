"""A LoRA run's adapters -> a diffusers / Wan (ComfyUI) / peft LoRA file. See megavg.train.export_lora."""

from megavg.train.export_lora import main
from megavg.utils.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
