"""Membership audits of diffusion models: were these artworks in the model's training data?"""
from pathlib import Path as _Path

__version__ = "0.1.0"

#: the Hydra configs, shipped inside the package (in a checkout, audit/configs is the top-level configs/ folder)
CONFIG_DIR = str(_Path(__file__).resolve().parent / "configs")
