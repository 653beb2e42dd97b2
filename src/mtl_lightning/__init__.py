"""mtl-lightning: multi-task sentence transformers with PyTorch Lightning and Hydra."""

import os

# Before anything imports huggingface_hub, which reads these once: a hub that stops answering
# fails a file request within seconds, not its defaults' 10 s per request. Values set in the
# environment win.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "5")

__version__ = "0.1.0"
