"""`python -m mtl_lightning.export ckpt_path=<run>/checkpoints/last.ckpt output=exported/`: a
checkpoint as a sentence-transformers / Hugging Face folder with its heads and a model card
(`mtl_lightning.hub.export`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mtl_lightning.core.errors import one_line_errors
from mtl_lightning.hub.export import export


@hydra.main(version_base="1.3", config_path="../../conf", config_name="export")
@one_line_errors
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
