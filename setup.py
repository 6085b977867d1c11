from setuptools import find_packages, setup

setup(
    name="megavg",
    version="0.1.0",
    description="Megatron-style distributed training of DC-VideoGen (DC-AE-V, AE-Adapt-V on Wan-2.1)",
    python_requires=">=3.10",
    packages=find_packages(include=["megavg", "megavg.*"]),
    install_requires=[
        "torch>=2.4,<2.15",
        "deepspeed>=0.16",
        "safetensors>=0.4",
        "pyyaml>=6",
        "numpy",
        "av>=12",
        "webdataset>=0.2.100",
        "tensorboard>=2.14",
        "peft>=0.13",
        "transformers>=4.45",
        "psutil",
        "tqdm",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-timeout",
            "ruff>=0.6",
            "diffusers>=0.33",
            "scikit-video",
        ],
        "gpu": ["flash-attn>=2.6", "transformer-engine[pytorch]>=2.0"],
    },
)
