"""mtl-lightning: multi-task sentence transformers with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
