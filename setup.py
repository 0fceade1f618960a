"""Installs tid_d2. Detectron2 itself is provided by scripts/setup_env.sh or by the user's own build."""
from setuptools import find_packages, setup

setup(
    name="tid_d2",
    version="0.1.0",
    description="Task Integration Distillation (TID) and dense detectors (GFL, ATSS) for Detectron2",
    packages=find_packages(include=["tid_d2", "tid_d2.*"]),
    python_requires=">=3.9",
    install_requires=[
        # Detectron2's own runtime dependencies (it is not installable from PyPI under its name).
        "Pillow", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8", "tabulate",
        "cloudpickle", "tqdm>4.29.0", "tensorboard", "fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10",
        "omegaconf>=2.1,<2.4", "hydra-core>=1.1", "black", "packaging", "opencv-python-headless",
        "setuptools<81", "numpy<2",  # Detectron2 0.7 predates NumPy 2
    ],
    extras_require={"dev": ["pytest>=7", "pytest-timeout"]},
)
