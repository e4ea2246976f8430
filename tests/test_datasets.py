"""fusion.training.datasets on the real corpora in ../shared (RAVDESS, FER2013, MELD), on CREMA-D-named empty files, and
the one label table of fusion.labels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from fusion.labels import (
    EMOTIONS,
    LABEL_MAPS,
    RAVDESS_CODES,
    RAVDESS_NATIVE,
    canonical,
    ravdess_actor,
    ravdess_label,
)
from fusion.training.datasets import (
    MODALITIES,
    Example,
    Manifest,
    crema_d,
    generic_csv,
    image_folder,
    load_manifest,
    meld,
    ravdess,
    save_manifest,
)
from fusion.training.splits import speaker_folds, speaker_split

# Per RAVDESS actor: neutral has no strong intensity, so 2 statements x 2 repetitions = 4 clips; the seven other
# emotions 2 intensities x 2 statements x 2 repetitions = 8 each: 60 clips. Calm joins neutral canonically.
RAVDESS_ACTORS = 18
RAVDESS_SPEECH_NATIVE = {"neutral": 4, **{name: 8 for name in RAVDESS_NATIVE if name != "neutral"}}
# FER2013 images per canonical class (the folders' file counts as shipped).
FER2013_VALIDATION = {
    "anger": 467,
    "disgust": 56,
    "fear": 496,
    "happiness": 895,
    "neutral": 607,
    "sadness": 653,
    "surprise": 415,
}
FER2013_TRAIN_SIZE = 28_709


@pytest.fixture(scope="module")
def speech(shared: Path) -> list[Example]:
    manifest = ravdess(shared / "data/ravdess-speech-16k")
    assert manifest.skipped == []
    return manifest.examples


@pytest.fixture(scope="module")
def meld_csvs(shared: Path) -> dict[str, Path]:
    return {split: shared / f"data/meld-text/{split}_sent_emo.csv" for split in ("train", "dev")}


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()


def test_label_maps_map_onto_the_canonical_emotions():
    assert set(LABEL_MAPS) == {"ravdess", "crema-d", "nemo", "emovo", "emospeech-in", "meld", "fer2013", "images"}
    for labels in LABEL_MAPS.values():
        assert set(labels.values()) <= set(EMOTIONS)
    assert set(LABEL_MAPS["ravdess"]) == set(RAVDESS_NATIVE) == set(RAVDESS_CODES.values())
    assert len(RAVDESS_NATIVE) == 8 and RAVDESS_CODES["02"] == "calm"
    assert set(LABEL_MAPS["meld"].values()) == set(LABEL_MAPS["fer2013"].values()) == set(EMOTIONS)
    assert canonical("ravdess", "calm") == "neutral"
    assert canonical("nemo", "surprised") == "surprise" and set(LABEL_MAPS["nemo"].values()) == set(EMOTIONS) - {
        "disgust"
    }
    assert canonical("meld", "joy") == canonical("fer2013", "happy") == canonical("crema-d", "HAP") == "happiness"


def test_canonical_names_the_unknown_label_and_dataset():
    with pytest.raises(ValueError, match="meld.*'contempt'"):
        canonical("meld", "contempt")
    with pytest.raises(ValueError, match="'affectnet'"):
        canonical("affectnet", "happy")


def test_ravdess_name_helpers():
    assert ravdess_label("01-01-06-01-02-01-12.mp4") == "fear"
    assert ravdess_label(Path("some.dir/03-01-02-01-01-01-01.flac")) == "neutral"
    assert ravdess_actor("01-01-06-01-02-01-12.mp4") == "12"
    with pytest.raises(ValueError, match="emotion code '09'"):
        ravdess_label("01-01-09-01-02-01-12.mp4")
    with pytest.raises(ValueError, match="not a RAVDESS file name"):
        ravdess_actor("interview.mp4")


def test_ravdess_speech(speech: list[Example], shared: Path):
    assert len(speech) == RAVDESS_ACTORS * sum(RAVDESS_SPEECH_NATIVE.values()) == 1080
    speakers = Counter(example.speaker for example in speech)
    assert speakers == {f"ravdess:{actor:02d}": 60 for actor in range(1, RAVDESS_ACTORS + 1)}
    assert {example.modalities for example in speech} == {("audio", "text")}
    assert {(example.dataset, example.split, example.text) for example in speech} == {("ravdess", None, None)}

    native = Counter(example.native_label for example in speech)
    assert native == {name: RAVDESS_ACTORS * count for name, count in RAVDESS_SPEECH_NATIVE.items()}
    labels = Counter(example.label for example in speech)
    assert labels == {label: 144 for label in EMOTIONS} | {"neutral": 72 + 144}

    by_name = {Path(example.path).name: example for example in speech}
    calm = by_name["03-01-02-02-01-02-17.flac"]
    assert (calm.label, calm.native_label, calm.speaker) == ("neutral", "calm", "ravdess:17")
    assert Path(calm.path) == shared / "data/ravdess-speech-16k/Actor_17/03-01-02-02-01-02-17.flac"
    assert by_name["03-01-05-01-01-01-01.flac"].label == "anger"


def test_ravdess_audio_visual_clips(shared: Path):
    clips = ravdess(shared / "data/av-clips/ravdess").examples
    assert len(clips) == 11
    assert {example.modalities for example in clips} == {MODALITIES}
    assert Counter(example.native_label for example in clips) == {"fearful": 2, "neutral": 2, "sad": 2, "surprised": 5}
    assert {example.label for example in clips} == {"fear", "neutral", "sadness", "surprise"}
    for example in clips:
        assert example.label == ravdess_label(example.path)
        assert example.speaker == f"ravdess:{ravdess_actor(example.path)}"
    # The corpus code says audio-video; that this re-encoding lost its audio is for the feature extractor to find.
    (silent,) = ravdess(shared / "data/av-clips/no-audio").examples
    assert (silent.modalities, silent.label, silent.speaker) == (MODALITIES, "surprise", "ravdess:19")


def test_ravdess_reports_files_it_cannot_parse(tmp_path: Path):
    touch(tmp_path, "a/03-01-05-01-01-01-07.wav", "a/02-01-03-01-01-01-08.mp4", "a/03-01-09-01-01-01-07.wav")
    touch(tmp_path, "b/take 3.flac", "b/notes.txt")
    with pytest.warns(UserWarning, match="skipped 2"):
        manifest = ravdess(tmp_path)
    assert isinstance(manifest, Manifest)
    assert [(Path(e.path).name, e.label, e.modalities) for e in manifest.examples] == [
        ("02-01-03-01-01-01-08.mp4", "happiness", ("video",)),
        ("03-01-05-01-01-01-07.wav", "anger", ("audio", "text")),
    ]
    reasons = {Path(path).name: reason for path, reason in manifest.skipped}
    assert reasons.keys() == {"03-01-09-01-01-01-07.wav", "take 3.flac"}  # notes.txt is not a candidate
    assert "emotion code '09'" in reasons["03-01-09-01-01-01-07.wav"]
    assert "not a RAVDESS file name" in reasons["take 3.flac"]

    with pytest.raises(ValueError, match="no usable RAVDESS files.*1 skipped"):
        ravdess(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="missing"):
        ravdess(tmp_path / "missing")


def test_crema_d_names(tmp_path: Path):
    good = ["1001_DFA_ANG_XX.wav", "1091_TIE_SAD_HI.flv", "1002_IEO_HAP_LO.mp4", "1045_IWW_NEU_XX.wav"]
    bad = ["1001_DFA_XYZ_XX.wav", "1001_DFA.wav", "0999_DFA_ANG_XX.wav", "1001_ABC_ANG_XX.wav"]
    touch(tmp_path, *(f"AudioWAV/{name}" if name.endswith(".wav") else f"Video/{name}" for name in good + bad))
    with pytest.warns(UserWarning, match="skipped 4"):
        manifest = crema_d(tmp_path)
    examples = {Path(example.path).name: example for example in manifest.examples}
    assert examples.keys() == set(good)
    assert (examples["1001_DFA_ANG_XX.wav"].label, examples["1001_DFA_ANG_XX.wav"].native_label) == ("anger", "ANG")
    assert examples["1091_TIE_SAD_HI.flv"].label == "sadness"
    assert examples["1002_IEO_HAP_LO.mp4"].label == "happiness"
    assert examples["1045_IWW_NEU_XX.wav"].label == "neutral"
    assert {name: example.speaker for name, example in examples.items()} == {
        "1001_DFA_ANG_XX.wav": "crema-d:1001",
        "1091_TIE_SAD_HI.flv": "crema-d:1091",
        "1002_IEO_HAP_LO.mp4": "crema-d:1002",
        "1045_IWW_NEU_XX.wav": "crema-d:1045",
    }
    assert examples["1001_DFA_ANG_XX.wav"].modalities == ("audio", "text")
    assert examples["1091_TIE_SAD_HI.flv"].modalities == examples["1002_IEO_HAP_LO.mp4"].modalities == MODALITIES
    reasons = {Path(path).name: reason for path, reason in manifest.skipped}
    assert reasons.keys() == set(bad)
    assert "'XYZ'" in reasons["1001_DFA_XYZ_XX.wav"]
    assert "actor '0999'" in reasons["0999_DFA_ANG_XX.wav"]


def test_fer2013(shared: Path):
    validation = image_folder(shared / "data/fer2013/validation")
    assert validation.skipped == []
    examples = validation.examples
    assert len(examples) == sum(FER2013_VALIDATION.values()) == 3589
    assert Counter(example.label for example in examples) == FER2013_VALIDATION
    assert {(e.native_label, e.label) for e in examples if e.native_label in ("happy", "angry", "sad")} == {
        ("happy", "happiness"),
        ("angry", "anger"),
        ("sad", "sadness"),
    }
    assert {(e.dataset, e.split, e.modalities) for e in examples} == {("fer2013", "validation", ("video",))}
    assert len({example.speaker for example in examples}) == len(examples)  # each image is its own speaker
    first = examples[0]
    assert first.speaker == f"fer2013:{first.native_label}/{Path(first.path).stem}"

    train = image_folder(shared / "data/fer2013/train").examples
    assert len(train) == FER2013_TRAIN_SIZE and {example.split for example in train} == {"train"}
    # Two train images in different classes share a file stem; the speaker keeps them apart.
    assert len({example.speaker for example in train}) == len(train)


def test_image_folder_reports_stray_images(tmp_path: Path):
    touch(tmp_path, "train/happy/1.jpg", "train/sad/2.PNG", "train/contempt/3.jpg", "train/4.jpg")
    with pytest.warns(UserWarning, match="skipped 2"):
        manifest = image_folder(tmp_path / "train")
    assert [(e.label, e.split) for e in manifest.examples] == [("happiness", "train"), ("sadness", "train")]
    reasons = {Path(path).name: reason for path, reason in manifest.skipped}
    assert "'contempt' is not a fer2013 class" in reasons["3.jpg"]
    assert "not directly in a class folder" in reasons["4.jpg"]
    with pytest.raises(ValueError, match="'affectnet'"):
        image_folder(tmp_path / "train", dataset="affectnet")


@pytest.mark.parametrize("split", ["train", "dev"])
def test_meld(meld_csvs: dict[str, Path], split: str):
    path = meld_csvs[split]
    table = pd.read_csv(path, encoding="utf-8")
    manifest = meld(path)
    examples = manifest.examples
    assert manifest.skipped == [] and len(examples) == len(table)
    assert Counter(example.label for example in examples) == Counter(table["Emotion"].map(LABEL_MAPS["meld"]).tolist())
    assert {e.label for e in examples if e.native_label == "joy"} == {"happiness"}
    assert [example.text for example in examples] == table["Utterance"].tolist()  # mojibake and all, as written
    assert [example.speaker for example in examples] == [f"meld:{name}" for name in table["Speaker"]]
    assert [example.utterance_id for example in examples] == [
        f"dia{d}_utt{u}" for d, u in zip(table["Dialogue_ID"], table["Utterance_ID"])
    ]
    assert {(e.dataset, e.split, e.modalities, e.path) for e in examples} == {("meld", split, ("text",), str(path))}


def test_meld_train_first_row(meld_csvs: dict[str, Path]):
    first = meld(meld_csvs["train"]).examples[0]
    assert (first.speaker, first.label, first.utterance_id) == ("meld:Chandler", "neutral", "dia0_utt0")
    assert first.text.startswith("also I was the point person on my company")


def test_meld_with_media(meld_csvs: dict[str, Path], tmp_path: Path):
    touch(tmp_path, "dia0_utt1.mp4")
    examples = meld(meld_csvs["dev"], media_dir=tmp_path).examples
    with_clip = [example for example in examples if example.modalities == MODALITIES]
    assert [(example.utterance_id, example.path) for example in with_clip] == [
        ("dia0_utt1", str(tmp_path / "dia0_utt1.mp4"))
    ]
    assert with_clip[0].text  # the transcript stays beside the clip
    assert sum(example.modalities == ("text",) for example in examples) == len(examples) - 1
    with pytest.raises(FileNotFoundError, match="missing"):
        meld(meld_csvs["dev"], media_dir=tmp_path / "missing")


def test_meld_reports_bad_rows(tmp_path: Path):
    path = tmp_path / "test_sent_emo.csv"
    pd.DataFrame(
        {
            "Utterance": ["Hi.", "What?", "Hey.", "NA"],  # "NA" is what was said, not a missing value
            "Speaker": ["Ross", "Rachel", "Joey", "Joey"],
            "Emotion": ["joy", "contempt", "neutral", "neutral"],
            "Dialogue_ID": ["3", "3", "x", "3"],
            "Utterance_ID": ["0", "1", "2", "3"],
        }
    ).to_csv(path, index=False)
    with pytest.warns(UserWarning, match="skipped 2"):
        manifest = meld(path)
    assert [(e.text, e.label, e.split, e.utterance_id) for e in manifest.examples] == [
        ("Hi.", "happiness", "test", "dia3_utt0"),
        ("NA", "neutral", "test", "dia3_utt3"),
    ]
    assert [reason.split(":")[0] for _, reason in manifest.skipped] == ["row 2", "row 3"]
    assert "'contempt'" in manifest.skipped[0].reason and "'x'" in manifest.skipped[1].reason

    (tmp_path / "dev_sent_emo.csv").write_text("Utterance,Speaker\nHi.,Ross\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing columns.*Emotion"):
        meld(tmp_path / "dev_sent_emo.csv")


def test_generic_csv(tmp_path: Path):
    touch(tmp_path, "clips/a.wav", "elsewhere/b.mp4")
    absolute = tmp_path / "elsewhere/b.mp4"
    rows = [
        {"path": "clips/a.wav", "label": "anger", "speaker": "s1", "modalities": "text,audio", "text": ""},
        {"path": str(absolute), "label": "calm", "speaker": "s2", "dataset": "ravdess", "text": "Dogs."},
        {"path": "", "label": "joy", "speaker": "s3", "dataset": "meld", "modalities": "text", "text": "Yay!"},
        {"path": "clips/a.wav", "label": "calm", "speaker": "s1"},  # calm is neither canonical nor in LABEL_MAPS[mine]
        {"path": "clips/gone.wav", "label": "fear", "speaker": "s1"},
        {"path": "clips/a.wav", "label": "fear", "speaker": "s1", "modalities": "audio,smell"},
        {"path": "", "label": "fear", "speaker": "s1", "modalities": "text"},
    ]
    path = tmp_path / "mine.csv"
    pd.DataFrame(rows).fillna("").to_csv(path, index=False)
    with pytest.warns(UserWarning, match="skipped 4"):
        manifest = generic_csv(path)
    assert manifest.examples == [
        Example(str(tmp_path / "clips/a.wav"), "anger", "anger", "mine:s1", "mine", ("audio", "text")),
        Example(str(absolute), "neutral", "calm", "ravdess:s2", "ravdess", MODALITIES, text="Dogs."),
        Example(str(path), "happiness", "joy", "meld:s3", "meld", ("text",), text="Yay!"),
    ]
    reasons = [reason for _, reason in manifest.skipped]
    assert [reason.split(":")[0] for reason in reasons] == ["row 4", "row 5", "row 6", "row 7"]
    assert "'calm'" in reasons[0] and "gone.wav" in reasons[1] and "smell" in reasons[2] and "text" in reasons[3]

    # A generic csv written from examples reads back as them.
    saved = tmp_path / "again.csv"
    pd.DataFrame(
        [
            {"path": e.path, "label": e.native_label, "speaker": e.speaker.split(":")[1], "dataset": e.dataset}
            | {"modalities": ",".join(e.modalities), "text": e.text or ""}
            for e in manifest.examples
        ]
    ).to_csv(saved, index=False)
    assert generic_csv(saved).examples == manifest.examples


def test_manifest_round_trip(speech: list[Example], meld_csvs: dict[str, Path], shared: Path, tmp_path: Path):
    touch(tmp_path, "1091_TIE_SAD_HI.flv")
    examples = [
        *speech[:5],
        *meld(meld_csvs["dev"]).examples,  # mojibake, quotes and commas in the text
        *image_folder(shared / "data/fer2013/validation").examples[:5],
        *crema_d(tmp_path).examples,
    ]
    path = tmp_path / "manifest.csv"
    save_manifest(examples, path)
    assert load_manifest(path) == examples

    pd.read_csv(path, dtype=str, keep_default_na=False).assign(label="joy").to_csv(path, index=False)
    with pytest.raises(ValueError, match="row 1: .*'joy'"):
        load_manifest(path)


def test_speaker_folds(speech: list[Example]):
    folds = speaker_folds(speech, 6)
    assert len(folds) == 6 and folds == speaker_folds(speech, 6)
    tested: list[str] = []
    for train, test in folds:
        assert sorted(train + test) == list(range(len(speech)))
        train_speakers = {speech[i].speaker for i in train}
        test_speakers = {speech[i].speaker for i in test}
        assert not train_speakers & test_speakers and len(test_speakers) == 3
        tested += test_speakers
    assert sorted(tested) == sorted({example.speaker for example in speech})  # each speaker tested exactly once

    with pytest.raises(ValueError, match="number of speakers"):
        speaker_folds(speech, RAVDESS_ACTORS + 1)


def test_speaker_folds_balance_dominant_speakers(meld_csvs: dict[str, Path]):
    examples = meld(meld_csvs["train"]).examples
    sizes = [len(test) for _, test in speaker_folds(examples, 6)]
    assert max(sizes) - min(sizes) <= 1  # MELD's six friends (1283-1510 rows each) land in different folds


def test_speaker_split(speech: list[Example]):
    train, validation = speaker_split(speech)
    assert (train, validation) == speaker_split(speech)
    assert sorted(train + validation) == list(range(len(speech)))
    validation_speakers = {speech[i].speaker for i in validation}
    assert not validation_speakers & {speech[i].speaker for i in train}
    assert len(validation_speakers) == round(0.15 * RAVDESS_ACTORS)
    assert speaker_split(speech, seed=1) != (train, validation)
    assert len({speech[i].speaker for i in speaker_split(speech, validation_fraction=0.01)[1]}) == 1
    with pytest.raises(ValueError, match="validation_fraction"):
        speaker_split(speech, validation_fraction=1.0)
