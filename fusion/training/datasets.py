"""Corpora as manifests: one labelled :class:`Example` per file or transcript row, and speaker-disjoint splits.

Each adapter (:func:`ravdess`, :func:`crema_d`, :func:`labels_tsv` for nEMO, EMOVO and emospeech-in, :func:`meld`,
:func:`image_folder`, :func:`generic_csv`) reads a corpus in place and returns a :class:`Manifest`: the examples,
and every candidate it could not use (a media file not named by the corpus's scheme, a row with an unknown label)
as a :class:`Skipped` with the reason. Nothing is dropped silently: an adapter also warns when it skipped anything,
and raises ValueError when nothing at all was usable (most likely the wrong folder). Candidates are the files with
the corpus's media suffixes, or a csv's rows; other files (notes, checksums) are not candidates.

Labels are canonical (:data:`fusion.labels.EMOTIONS`), with the corpus's own label kept beside them, and
speakers are namespaced by corpus so that a split over several corpora never merges two people. Modalities are
what the corpus says a file carries, not what decoding finds: a RAVDESS ``01-`` clip re-encoded without its audio
still lists audio, and :class:`fusion.media.features.RecordingFeatures` reports what is really there.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

from fusion.labels import EMOTIONS, LABEL_MAPS, MODALITIES, RAVDESS_CODES, canonical, ravdess_fields

# RAVDESS modality code (first field of the name) -> what the file carries. The speech is scripted, so a file with
# a voice has words; a video-only file has neither.
RAVDESS_MODALITIES: dict[str, tuple[str, ...]] = {
    "01": ("audio", "text", "video"),
    "02": ("video",),
    "03": ("audio", "text"),
}
RAVDESS_SUFFIXES = frozenset({".wav", ".flac", ".mp4"})

# CREMA-D release formats: AudioWAV holds the voice only; VideoFlash (.flv, often converted to .mp4) face and voice.
CREMA_D_MODALITIES: dict[str, tuple[str, ...]] = {
    ".wav": ("audio", "text"),
    ".flv": ("audio", "text", "video"),
    ".mp4": ("audio", "text", "video"),
}
CREMA_D_SENTENCES = frozenset({"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"})
CREMA_D_LEVELS = frozenset({"LO", "MD", "HI", "XX"})  # low, medium, high, unspecified intensity
CREMA_D_ACTORS = range(1001, 1092)

MELD_COLUMNS = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
MELD_SPLITS = ("train", "dev", "test")  # MELD's csv files are {split}_sent_emo.csv

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

GENERIC_COLUMNS = ("path", "label", "speaker")  # required; dataset, modalities and text are optional


@dataclass(frozen=True)
class Example:
    """One labelled example of a manifest."""

    path: str  # media or image file; for rows without media (MELD, text-only csv rows), the csv file
    label: str  # canonical emotion, one of fusion.labels.EMOTIONS
    native_label: str  # the corpus's own label
    # Namespaced by corpus: "ravdess:01", "crema-d:1001", "meld:Chandler". FER2013 has no speaker ids, so each image
    # is its own "speaker", "fer2013:<class>/<file stem>" (two train images in different classes share a stem).
    speaker: str
    dataset: str  # "ravdess", "crema-d", "meld", "fer2013", or a generic csv's dataset
    modalities: tuple[str, ...]  # what the corpus says the example carries, in MODALITIES order
    text: str | None = None  # the corpus's transcript (MELD), used instead of Whisper for text-only examples
    split: str | None = None  # the corpus's own split when it has one (MELD train/dev/test, FER2013 folders)
    utterance_id: str | None = None  # MELD "dia{D}_utt{U}", else None

    def __post_init__(self):
        if self.label not in EMOTIONS:
            raise ValueError(f"{self.path}: label {self.label!r} is not one of {EMOTIONS}")
        if not self.modalities or self.modalities != tuple(m for m in MODALITIES if m in self.modalities):
            raise ValueError(f"{self.path}: modalities {self.modalities} are not a subset of {MODALITIES} in order")


class Skipped(NamedTuple):
    """A candidate file or csv row that an adapter could not turn into an example."""

    path: str
    reason: str


@dataclass
class Manifest:
    """What an adapter made of a corpus: the examples, and the candidates it skipped with the reason."""

    examples: list[Example]
    skipped: list[Skipped] = field(default_factory=list)


def ravdess(root: str | os.PathLike) -> Manifest:
    """Every RAVDESS file (.wav, .flac, .mp4, at any depth) under root, labelled from its name.

    Speakers are the actors ("ravdess:01"); modalities follow the name's modality code: 01 audio-video, 02 video
    only, 03 audio only (speech and song both have words).
    """
    examples, skipped = [], []
    for path in _files(root, RAVDESS_SUFFIXES):
        try:
            codes = ravdess_fields(path.name)
        except ValueError as error:
            skipped.append(Skipped(str(path), str(error)))
            continue
        native = RAVDESS_CODES[codes["emotion"]]
        examples.append(
            Example(
                path=str(path),
                label=canonical("ravdess", native),
                native_label=native,
                speaker=f"ravdess:{codes['actor']}",
                dataset="ravdess",
                modalities=RAVDESS_MODALITIES[codes["modality"]],
            )
        )
    return _manifest(examples, skipped, f"RAVDESS files under {root}")


def crema_d(root: str | os.PathLike) -> Manifest:
    """Every CREMA-D file (.wav, .flv, .mp4, at any depth) under root, named ``{actor}_{sentence}_{emotion}_{level}``.

    E.g. ``1001_DFA_ANG_XX.wav``: speaker "crema-d:1001", native label "ANG", canonical "anger". Audio files carry
    (audio, text), video files all three.
    """
    examples, skipped = [], []
    for path in _files(root, CREMA_D_MODALITIES):
        try:
            examples.append(_crema_d_example(path))
        except ValueError as error:
            skipped.append(Skipped(str(path), str(error)))
    return _manifest(examples, skipped, f"CREMA-D files under {root}")


def _crema_d_example(path: Path) -> Example:
    parts = path.stem.split("_")
    if len(parts) != 4:
        raise ValueError(f"not a CREMA-D file name (ACTOR_SENTENCE_EMOTION_LEVEL): {path.name!r}")
    actor, sentence, emotion, level = parts
    if not (actor.isdigit() and int(actor) in CREMA_D_ACTORS):
        raise ValueError(f"not a CREMA-D file name: {path.name!r} has actor {actor!r}")
    if sentence not in CREMA_D_SENTENCES or level not in CREMA_D_LEVELS:
        raise ValueError(f"not a CREMA-D file name: {path.name!r} has sentence {sentence!r}, level {level!r}")
    return Example(
        path=str(path),
        label=canonical("crema-d", emotion),
        native_label=emotion,
        speaker=f"crema-d:{actor}",
        dataset="crema-d",
        modalities=CREMA_D_MODALITIES[path.suffix.lower()],
    )


LABELS_TSV_COLUMNS = ("file", "emotion", "speaker", "text")  # required columns of a corpus folder's labels.tsv


def nemo(root: str | os.PathLike) -> Manifest:
    """nEMO, Polish acted emotional speech (9 actors, 6 emotions): the files listed in ``root/labels.tsv``."""
    return labels_tsv(root, "nemo")


def emovo(root: str | os.PathLike) -> Manifest:
    """EMOVO, Italian acted emotional speech (6 actors, 7 emotions): the files listed in ``root/labels.tsv``."""
    return labels_tsv(root, "emovo")


def emospeech_in(root: str | os.PathLike) -> Manifest:
    """Indian EmoSpeech Command, keywords recorded on users' own phones (4 classes): ``root/labels.tsv``'s files."""
    return labels_tsv(root, "emospeech-in")


def labels_tsv(root: str | os.PathLike, dataset: str) -> Manifest:
    """A speech corpus folder described by ``root/labels.tsv`` (columns file, emotion, speaker, ..., text; utf-8).

    emotion is the corpus's own label (a key of ``LABEL_MAPS[dataset]``); speakers are namespaced by corpus
    ("emovo:f1"); every file carries a voice and the words of its text column. A listed file that is not in the
    folder, or a row with an unknown label or no speaker, is skipped with the reason; a folder without labels.tsv
    raises FileNotFoundError naming it.
    """
    root = Path(root)
    table = root / "labels.tsv"
    if not table.is_file():
        raise FileNotFoundError(f"{dataset} labels not found: {table}")
    import pandas as pd  # imported when a corpus is read: `fusion --help` needs only DATA_KINDS

    rows = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8")
    missing = [column for column in LABELS_TSV_COLUMNS if column not in rows.columns]
    if missing:
        raise ValueError(f"{table}: missing columns {missing}")
    examples, skipped = [], []
    for number, row in enumerate(rows.to_dict("records"), 1):
        path = root / row["file"]
        try:
            if not path.is_file():
                raise ValueError(f"row {number}: file not found")
            if not row["speaker"]:
                raise ValueError(f"row {number}: empty speaker")
            label = canonical(dataset, row["emotion"])
        except ValueError as error:
            skipped.append(Skipped(str(path), str(error)))
            continue
        examples.append(
            Example(
                path=str(path),
                label=label,
                native_label=row["emotion"],
                speaker=f"{dataset}:{row['speaker']}",
                dataset=dataset,
                modalities=("audio", "text"),
                text=row["text"] or None,
            )
        )
    return _manifest(examples, skipped, f"{dataset} files listed in {table}")


def meld(csv_path: str | os.PathLike, *, media_dir: str | os.PathLike | None = None) -> Manifest:
    """One example per row of a MELD csv (``{train,dev,test}_sent_emo.csv``), with its transcript as text.

    With media_dir, a row whose clip ``dia{D}_utt{U}.mp4`` (MELD's release naming) is there points at it and
    carries all three modalities; otherwise (no media_dir, or MELD's few missing clips) the row is text only and
    its path is the csv. Skipped rows are reported as the csv's path with the row number (1 = first data row).
    """
    csv_path = Path(csv_path)
    media = None if media_dir is None else Path(media_dir)
    if media is not None and not media.is_dir():
        raise FileNotFoundError(f"MELD media folder not found: {media}")
    split = next((name for name in MELD_SPLITS if csv_path.name.startswith(name)), None)
    examples, skipped = [], []
    for number, row in enumerate(_read_csv(csv_path, MELD_COLUMNS), 1):
        try:
            examples.append(_meld_example(row, csv_path, media, split))
        except ValueError as error:
            skipped.append(Skipped(str(csv_path), f"row {number}: {error}"))
    return _manifest(examples, skipped, f"MELD rows in {csv_path}")


def _meld_example(row: dict[str, str], csv_path: Path, media: Path | None, split: str | None) -> Example:
    if not row["Utterance"] or not row["Speaker"]:
        raise ValueError("empty Utterance or Speaker")
    if not (row["Dialogue_ID"].isdigit() and row["Utterance_ID"].isdigit()):
        raise ValueError(f"Dialogue_ID {row['Dialogue_ID']!r} and Utterance_ID {row['Utterance_ID']!r} not integers")
    utterance_id = f"dia{int(row['Dialogue_ID'])}_utt{int(row['Utterance_ID'])}"
    clip = None if media is None else media / f"{utterance_id}.mp4"
    has_clip = clip is not None and clip.is_file()
    return Example(
        path=str(clip if has_clip else csv_path),
        label=canonical("meld", row["Emotion"]),
        native_label=row["Emotion"],
        speaker=f"meld:{row['Speaker']}",
        dataset="meld",
        modalities=MODALITIES if has_clip else ("text",),
        text=row["Utterance"],
        split=split,
        utterance_id=utterance_id,
    )


def image_folder(root: str | os.PathLike, *, dataset: str = "fer2013") -> Manifest:
    """Every image (.jpg, .jpeg, .png) in ``root/<class>/``, one folder per native class of ``LABEL_MAPS[dataset]``.

    root is one split (FER2013's ``train`` or ``validation``) and its folder name is the examples' split. Images
    carry ("video",): a face without voice or words. Images outside a class folder, and folders whose name is not
    a class, are skipped.
    """
    if dataset not in LABEL_MAPS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {sorted(LABEL_MAPS)}")
    root = Path(root)
    examples, skipped = [], []
    for path in _files(root, IMAGE_SUFFIXES):
        folders = path.relative_to(root).parts[:-1]
        if len(folders) != 1:
            skipped.append(Skipped(str(path), f"not directly in a class folder of {root}"))
        elif folders[0] not in LABEL_MAPS[dataset]:
            skipped.append(Skipped(str(path), f"folder {folders[0]!r} is not a {dataset} class"))
        else:
            examples.append(
                Example(
                    path=str(path),
                    label=canonical(dataset, folders[0]),
                    native_label=folders[0],
                    speaker=f"{dataset}:{folders[0]}/{path.stem}",
                    dataset=dataset,
                    modalities=("video",),
                    split=root.name,
                )
            )
    return _manifest(examples, skipped, f"{dataset} images under {root}")


def generic_csv(path: str | os.PathLike) -> Manifest:
    """Examples listed in a csv of your own, one per row. Columns:

    path: the media file, relative to the csv's folder or absolute; may be empty for a text-only row (the path is
        then the csv, as for MELD)
    label: a canonical emotion (fusion.labels.EMOTIONS), or the dataset's own label (a key of LABEL_MAPS[dataset])
    speaker: the speaker id within the dataset; examples get "{dataset}:{speaker}"
    dataset (optional): the corpus's name; default the csv's file stem
    modalities (optional): e.g. "audio,text"; default "audio,text,video"
    text (optional): a transcript; required for text-only rows

    Rows whose file is missing or whose label or modalities are unknown are skipped, reported as the csv's path
    with the row number (1 = first data row).
    """
    csv_path = Path(path)
    examples, skipped = [], []
    for number, row in enumerate(_read_csv(csv_path, GENERIC_COLUMNS), 1):
        try:
            examples.append(_generic_example(row, csv_path))
        except ValueError as error:
            skipped.append(Skipped(str(csv_path), f"row {number}: {error}"))
    return _manifest(examples, skipped, f"rows in {csv_path}")


def _generic_example(row: dict[str, str], csv_path: Path) -> Example:
    dataset = row.get("dataset") or csv_path.stem
    native = row["label"]
    if native not in EMOTIONS and dataset not in LABEL_MAPS:
        raise ValueError(f"label {native!r} is not canonical and dataset {dataset!r} has no entry in LABEL_MAPS")
    label = native if native in EMOTIONS else canonical(dataset, native)
    modalities = _parse_modalities(row.get("modalities") or ",".join(MODALITIES))
    text = row.get("text") or None
    if modalities == ("text",) and text is None:
        raise ValueError("a text-only row needs a text")
    if not row["speaker"]:
        raise ValueError("empty speaker")
    if row["path"]:
        media = csv_path.parent / row["path"]  # an absolute row["path"] replaces the csv's folder
        if not media.is_file():
            raise ValueError(f"file not found: {media}")
    elif modalities == ("text",):
        media = csv_path
    else:
        raise ValueError(f"empty path for modalities {modalities}")
    return Example(
        path=str(media),
        label=label,
        native_label=native,
        speaker=f"{dataset}:{row['speaker']}",
        dataset=dataset,
        modalities=modalities,
        text=text,
    )


def save_manifest(examples: Sequence[Example], path: str | os.PathLike) -> None:
    """Write examples to a csv (utf-8) with one column per Example field; modalities as e.g. "audio,text".

    :func:`load_manifest` reads it back equal, except that an empty optional string ("") comes back as None:
    both are an empty cell. The adapters never make empty ones.
    """
    rows = [{**asdict(example), "modalities": ",".join(example.modalities)} for example in examples]
    columns = [f.name for f in fields(Example)]
    import pandas as pd

    pd.DataFrame(rows, columns=columns).to_csv(path, index=False, encoding="utf-8")


def load_manifest(path: str | os.PathLike) -> list[Example]:
    """Read a csv written by :func:`save_manifest`; ValueError names the first bad row."""
    optional = {f.name for f in fields(Example) if f.default is None}
    examples = []
    for number, row in enumerate(_read_csv(Path(path), [f.name for f in fields(Example)]), 1):
        values = {name: (value or None) if name in optional else value for name, value in row.items()}
        try:
            examples.append(Example(**{**values, "modalities": _parse_modalities(row["modalities"])}))
        except ValueError as error:
            raise ValueError(f"{path}, row {number}: {error}") from error
    return examples


def _files(root: str | os.PathLike, suffixes: Collection[str]) -> list[Path]:
    """The files under root, at any depth, whose suffix (any case) is one of suffixes, in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {root}")
    return sorted(path for path in root.rglob("*") if path.suffix.lower() in suffixes and path.is_file())


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a utf-8 csv as strings, exactly as written: no NaN for empty cells or for text such as "NA"."""
    import pandas as pd

    table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return table.to_dict("records")


def _parse_modalities(text: str) -> tuple[str, ...]:
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in MODALITIES]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"modalities {text!r} are not distinct names from {MODALITIES}")
    return tuple(m for m in MODALITIES if m in names)


def _manifest(examples: list[Example], skipped: list[Skipped], source: str) -> Manifest:
    if not examples:
        detail = f"; first skipped: {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise ValueError(f"no usable {source} ({len(skipped)} skipped{detail})")
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} of the {source}; first: {skipped[0].path}: {skipped[0].reason}", stacklevel=3
        )
    return Manifest(examples, skipped)


DATA_KINDS = ("ravdess", "crema-d", "nemo", "emovo", "emospeech-in", "meld", "fer2013", "images", "csv", "manifest")


def from_spec(spec: str) -> Manifest:
    """A corpus named on the command line as KIND=PATH.

    ravdess=DIR, crema-d=DIR, nemo=DIR, emovo=DIR, emospeech-in=DIR (folders with a labels.tsv), meld=CSV
    (meld=CSV:MEDIA_DIR with clips), fer2013=DIR (an image folder labelled with FER2013's class names), images=DIR
    (an image folder with canonical class names), csv=FILE (the generic csv), manifest=FILE (written by save_manifest).
    """
    kind, _, path = spec.partition("=")
    if kind not in DATA_KINDS or not path:
        raise ValueError(f"data must be KIND=PATH with KIND one of {', '.join(DATA_KINDS)}; got {spec!r}")
    if kind == "ravdess":
        return ravdess(path)
    if kind == "crema-d":
        return crema_d(path)
    if kind in ("nemo", "emovo", "emospeech-in"):
        return labels_tsv(path, kind)
    if kind == "meld":
        csv_path, _, media_dir = path.partition(":")
        return meld(csv_path, media_dir=media_dir or None)
    if kind in ("fer2013", "images"):
        return image_folder(path, dataset="fer2013" if kind == "fer2013" else "images")
    if kind == "csv":
        return generic_csv(path)
    return Manifest(load_manifest(path))


def from_specs(specs: Sequence[str]) -> Manifest:
    """Several KIND=PATH corpora as one manifest (see :func:`from_spec`)."""
    manifests = [from_spec(spec) for spec in specs]
    return Manifest([e for m in manifests for e in m.examples], [s for m in manifests for s in m.skipped])
