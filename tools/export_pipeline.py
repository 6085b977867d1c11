"""Write a generation pipeline folder from megavg model folders (see megavg/infer/export.py).

    python tools/export_pipeline.py --transformer MODEL --vae MODEL --text-encoder DIR \
        [--image-encoder DIR] [--solver unipc --shift 5.0] --out PIPELINE [--dtype bf16] [--diffusers]
"""

from megavg.infer.export import main
from megavg.utils.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
