"""Sentence embeddings of a file, from a trained checkpoint or a plain encoder.

python -m mtl_lightning.encode ckpt_path=<run>/checkpoints/last.ckpt input=a.txt output=b.npy
python -m mtl_lightning.encode ckpt_path=none encoder=<hub id or dir> input=a.txt output=b.npy
python -m mtl_lightning.encode ckpt_path=<lora_per_task run>/checkpoints/last.ckpt adapter=<task> \
    input=a.txt output=b.npy
"""

from __future__ import annotations

import sys

import hydra
import numpy as np
from omegaconf import DictConfig

from mtl_lightning.config_check import check_encode_config
from mtl_lightning.core.errors import ConfigError, one_line_errors
from mtl_lightning.model.inference import (
    DEFAULT_MAX_LENGTH,
    Predictor,
    check_output,
    read_texts,
    write_embeddings,
)

# How the encoder's errors name training's keys, and this command's keys for the same thing.
TRAIN_KEYS = {
    "model.encoder.name_or_path": "encoder",
    "model.encoder.pooling": "pooling",
    "model.encoder.normalize": "normalize",
    " (drop the model= override)": "",
}


def _own_keys(message: str) -> str:
    for train_key, own_key in TRAIN_KEYS.items():
        message = message.replace(train_key, own_key)
    return message


def encode(cfg: DictConfig) -> np.ndarray:
    """Write the embeddings of `input`'s sentences to `output`, in input order; return them."""
    check_encode_config(cfg)
    if cfg.ckpt_path is None:
        raise ConfigError(
            "ckpt_path is missing: give ckpt_path=<run>/checkpoints/last.ckpt, or ckpt_path=none "
            "for the plain encoder named by encoder=."
        )
    if cfg.input is None or cfg.output is None:
        raise ConfigError(
            f"input and output are both needed: got input={cfg.input}, output={cfg.output}; "
            "e.g. input=sentences.txt output=embeddings.npy."
        )
    plain = str(cfg.ckpt_path).lower() == "none"
    # As typed: normalize=false, not Python's False.
    chosen = [
        f"{key}={str(cfg[key]).lower() if isinstance(cfg[key], bool) else cfg[key]}"
        for key in ("pooling", "normalize")
        if cfg[key] is not None
    ]
    if chosen and not plain:
        raise ConfigError(
            f"{' and '.join(chosen)} cannot change a checkpoint's encoder, which pools and "
            "normalises as it was trained: drop them, or give ckpt_path=none encoder=<hub id or "
            "folder> to choose them for a plain encoder."
        )
    # Bad files fail before the model loads.
    texts = read_texts(cfg.input)
    output = check_output(cfg.output, (".npy", ".parquet"), cfg.input)
    settings = {"device": cfg.device, "batch_size": cfg.batch_size, "max_length": cfg.max_length}
    adapter = cfg.get("adapter")
    if plain and adapter is not None:
        raise ConfigError(
            f"adapter={adapter} chooses a per-task adapter of a checkpoint, and ckpt_path=none "
            "is a plain encoder: drop adapter=, or give a checkpoint of experiment=lora_per_task."
        )
    if plain:
        if cfg.max_length is None:  # no training length to follow
            settings["max_length"] = DEFAULT_MAX_LENGTH
        try:
            predictor = Predictor.from_encoder(
                cfg.encoder, pooling=cfg.pooling, normalize=cfg.normalize, **settings
            )
        except ConfigError as error:  # the encoder's sentences name train's keys
            raise ConfigError(_own_keys(str(error))) from None
    else:
        predictor = Predictor.from_checkpoint(cfg.ckpt_path, **settings)
    embeddings = predictor.encode(texts, adapter=adapter)
    replaced = " (replacing the file that was there)" if output.exists() else ""
    write_embeddings(output, texts, embeddings)
    rows, width = embeddings.shape
    print(f"Wrote {rows} x {width} embeddings to {output}{replaced}.", file=sys.stderr)
    return embeddings


@hydra.main(version_base="1.3", config_path="../../conf", config_name="encode")
@one_line_errors
def main(cfg: DictConfig) -> None:
    encode(cfg)


if __name__ == "__main__":
    main()
