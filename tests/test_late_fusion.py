"""Late fusion arithmetic: calibration, weights, missing modalities (synthetic probabilities, no models)."""

import numpy as np
import pandas as pd
import pytest

from fusion.experts.late_fusion import LateFusion
from fusion.serving.prediction import weighted_summary, with_summary_weights
from fusion.training.calibration import fit_temperature, fit_weights
from fusion.training.metrics import expected_calibration_error

C = 7


def _probabilities(labels, *, accuracy, confidence, rng):
    """Rows whose argmax is the label with probability `accuracy`, with `confidence` on the argmax."""
    n = len(labels)
    guess = np.where(rng.random(n) < accuracy, labels, rng.integers(0, C, n))
    p = np.full((n, C), (1 - confidence) / (C - 1))
    p[np.arange(n), guess] = confidence
    return p


def test_weights_favour_the_modality_that_carries_the_label():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, 2000)
    probabilities = {
        "audio": _probabilities(labels, accuracy=0.9, confidence=0.6, rng=rng),
        "text": _probabilities(labels, accuracy=0.2, confidence=0.6, rng=rng),  # about chance (1/7 + ...)
        "video": _probabilities(labels, accuracy=0.5, confidence=0.6, rng=rng),
    }
    weights = fit_weights(probabilities, labels)
    assert weights["audio"] > weights["video"] > weights["text"]
    pooled = LateFusion(weights=weights)(probabilities)
    assert (pooled.argmax(1) == labels).mean() >= (probabilities["audio"].argmax(1) == labels).mean() - 0.01


def test_one_modality_keeps_the_experts_decisions_and_absent_rows_are_nan():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, C, 500)
    face = _probabilities(labels, accuracy=0.6, confidence=0.5, rng=rng)
    audio = np.full_like(face, np.nan)
    audio[:100] = _probabilities(labels[:100], accuracy=0.6, confidence=0.5, rng=rng)
    face[:50] = np.nan  # rows 0-49: audio only; 50-99 both; 100-: face only
    fusion = LateFusion(temperatures={"video": 2.0, "audio": 0.5}, weights={"video": 1.0, "audio": 3.0})
    pooled = fusion({"video": face, "audio": audio, "text": None})
    np.testing.assert_allclose(pooled.sum(1), 1.0)
    np.testing.assert_array_equal(pooled[100:].argmax(1), face[100:].argmax(1))
    np.testing.assert_array_equal(pooled[:50].argmax(1), audio[:50].argmax(1))
    empty = fusion({"video": np.full((2, C), np.nan)})
    assert np.isnan(empty).all()
    assert LateFusion.from_dict(fusion.to_dict()) == fusion


def test_a_fitted_temperature_cools_overconfident_probabilities():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, C, 3000)
    overconfident = _probabilities(labels, accuracy=0.5, confidence=0.95, rng=rng)
    temperature = fit_temperature(overconfident, labels)
    assert temperature > 1.5
    calibrated = LateFusion(temperatures={"video": temperature})({"video": overconfident})
    assert expected_calibration_error(calibrated, labels) < 0.05 < expected_calibration_error(overconfident, labels)


def test_ece_of_perfectly_calibrated_probabilities_is_small():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, C, 20000)
    # right 65% of the time, plus the random guesses that hit the label by chance (1 in 7 of the other 35%)
    p = _probabilities(labels, accuracy=0.65, confidence=0.65 + 0.35 / C, rng=rng)
    assert expected_calibration_error(p, labels) == pytest.approx(0.0, abs=0.02)


def test_an_expert_that_only_repeats_its_prior_does_not_move_the_others_decisions():
    """The prior is counted once: a text expert that always answers its training prior (47% neutral, like MELD)
    adds no evidence, so the pooled decisions are the voice expert's; without its prior it would pull to neutral."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, C, 1000)
    voice = _probabilities(labels, accuracy=0.7, confidence=0.35, rng=rng)
    prior = np.full(C, 0.53 / (C - 1))
    prior[6] = 0.47
    text = np.tile(prior, (len(labels), 1))
    with_prior = LateFusion(priors={"text": prior.tolist()})({"audio": voice, "text": text})
    np.testing.assert_array_equal(with_prior.argmax(1), voice.argmax(1))
    without = LateFusion()({"audio": voice, "text": text})
    assert (without.argmax(1) == 6).mean() > (voice.argmax(1) == 6).mean() + 0.2


def test_words_that_say_neutral_count_as_no_evidence_under_a_gate():
    """A gated expert whose input carries no emotion (it says neutral) leaves the voice's answer as it was; one
    that sees an emotion counts about in full; without a voice the words are still the answer."""
    rng = np.random.default_rng(5)
    voice = rng.dirichlet(np.ones(C), 40)
    bland = np.full((40, C), 0.002)
    bland[:, 6] = 1 - 0.002 * (C - 1)  # neutral, the last of EMOTIONS
    angry = np.full((40, C), 0.01)
    angry[:, 0] = 1 - 0.01 * (C - 1)
    gated = LateFusion(gates={"text": 2.0})
    np.testing.assert_allclose(gated({"audio": voice, "text": bland}), gated({"audio": voice}), atol=1e-3)
    plain = LateFusion()
    assert np.abs(plain({"audio": voice, "text": bland}) - plain({"audio": voice})).max() > 0.1  # the old rule moves
    np.testing.assert_allclose(
        gated({"audio": voice, "text": angry}), plain({"audio": voice, "text": angry}), atol=0.05
    )
    np.testing.assert_allclose(gated({"text": bland}), plain({"text": bland}), atol=1e-12)
    assert LateFusion.from_dict(gated.to_dict()) == gated


def test_with_neutral_as_absence_half_bland_words_do_not_argue_for_neutral():
    """Words that lean to neutral more than their prior but not fully (q(neutral) 0.7): the gate alone still lets
    them pull towards neutral; with neutral_as_absence they count not at all, and the voice's answer is as it was.
    Words that see an emotion still count."""
    rng = np.random.default_rng(6)
    voice = rng.dirichlet(np.ones(C), 60)
    prior = {"text": [0.1, 0.05, 0.05, 0.15, 0.1, 0.1, 0.45]}
    half = np.tile(np.array(prior["text"]) * 0.3 / 0.55, (60, 1))
    half[:, 6] = 0.7
    gated = LateFusion(priors=prior, gates={"text": 1.0})
    absent = LateFusion(priors=prior, gates={"text": 1.0}, neutral_as_absence=True)
    alone = absent({"audio": voice})
    pulled = gated({"audio": voice, "text": half})[:, 6] - alone[:, 6]
    assert (pulled > 0).all() and pulled.mean() > 0.05
    np.testing.assert_allclose(absent({"audio": voice, "text": half}), alone, atol=1e-6)
    angry = np.full((60, C), 0.02)
    angry[:, 0] = 1 - 0.02 * (C - 1)
    assert (absent({"audio": voice, "text": angry})[:, 0] > alone[:, 0]).all()
    np.testing.assert_allclose(absent({"text": half}), gated({"text": half}), atol=1e-12)  # words alone: as before
    assert LateFusion.from_dict(absent.to_dict()) == absent


def test_a_stricter_absence_ratio_lets_only_clearly_emotional_words_count():
    """absence_ratio 0.5: words whose q(neutral) is under their prior's but above half of it (0.3 against 0.45)
    count not at all; words that see clearly more emotion (q(neutral) 0.1) still count, as with the ratio 1."""
    rng = np.random.default_rng(7)
    voice = rng.dirichlet(np.ones(C), 60)
    prior = {"text": [0.1, 0.05, 0.05, 0.15, 0.1, 0.1, 0.45]}

    def words(neutral: float) -> np.ndarray:
        row = np.full(C, (1 - neutral - 0.4) / (C - 2))
        row[0], row[6] = 0.4, neutral
        return np.tile(row, (60, 1))

    strict = LateFusion(priors=prior, gates={"text": 0.0}, neutral_as_absence=True, absence_ratio=0.5)
    loose = LateFusion(priors=prior, gates={"text": 0.0}, neutral_as_absence=True)
    alone = strict({"audio": voice})
    np.testing.assert_allclose(strict({"audio": voice, "text": words(0.3)}), alone, atol=1e-6)
    assert (loose({"audio": voice, "text": words(0.3)})[:, 0] > alone[:, 0]).all()
    np.testing.assert_allclose(
        strict({"audio": voice, "text": words(0.1)}), loose({"audio": voice, "text": words(0.1)})
    )
    assert (strict({"audio": voice, "text": words(0.1)})[:, 0] > alone[:, 0]).all()
    assert LateFusion.from_dict(strict.to_dict()) == strict and "absence_ratio" not in loose.to_dict()


def test_with_certainty_words_unsure_which_emotion_barely_move_the_voice():
    """Words that see emotion but spread it over anger, happiness and surprise (Whisper's "!" after a neutral sentence
    read loudly) turn the voice's sadness into anger without the certainty weight; with it they move the voice's
    odds by a fraction of that and its answer stands. Words that name one emotion still count (their weight is
    their top emotion's share of q(not neutral))."""
    prior = {"text": [0.1, 0.05, 0.05, 0.15, 0.1, 0.1, 0.45]}
    voice = np.array([[0.05, 0.05, 0.3, 0.05, 0.4, 0.05, 0.1]])  # sadness over fear
    spread = np.array([[0.3, 0.02, 0.02, 0.33, 0.02, 0.24, 0.07]])
    named = np.array([[0.85, 0.02, 0.02, 0.03, 0.02, 0.03, 0.03]])
    absent = LateFusion(priors=prior, gates={"text": 0.0}, neutral_as_absence=True)
    sure = LateFusion(priors=prior, gates={"text": 0.0}, neutral_as_absence=True, certainty=1.0)
    alone = sure({"audio": voice})

    def moved(fusion, words):  # how far the words move the log-odds of sadness against fear
        fused = fusion({"audio": voice, "text": words})
        return abs(np.log(fused[0, 4] / fused[0, 2]) - np.log(alone[0, 4] / alone[0, 2]))

    assert moved(absent, spread) > 0 and moved(sure, spread) < 0.4 * moved(absent, spread)
    assert absent({"audio": voice, "text": spread})[0].argmax() == 0  # without the weight the words say anger
    assert sure({"audio": voice, "text": spread})[0].argmax() == alone[0].argmax() == 4
    assert sure({"audio": voice, "text": named})[0].argmax() == 0
    np.testing.assert_allclose(sure.gate("text", named), named[0, 0] / (1 - named[0, 6]))
    np.testing.assert_allclose(sure({"text": spread}), absent({"text": spread}), atol=1e-12)  # words alone: as before
    assert LateFusion.from_dict(sure.to_dict()) == sure and "certainty" not in absent.to_dict()


def test_a_resting_face_after_the_voice_does_not_tip_the_recordings_summary():
    """A recording whose voice says sadness by a hair (0.52 against neutral 0.47) and then shows a resting face for
    0.4 s with no voice: counted by its seconds alone, the face's neutral tips the summary; with the summary weights
    (the gates one level up) the resting face counts 0 and the voice's answer stands. A face that shows an emotion
    there still counts, by its gate; in a recording with no voice at all every face segment counts in full."""
    labels = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
    prior = [0.13, 0.03, 0.13, 0.25, 0.17, 0.12, 0.17]
    fusion = LateFusion(priors={"video": prior}, gates={"video": 0.0}, neutral_as_absence=True, certainty=1.0)
    voice = np.array([[0.0, 0.0, 0.005, 0.0, 0.52, 0.005, 0.47], [np.nan] * C])
    resting = np.array([[0.02, 0.01, 0.02, 0.05, 0.1, 0.02, 0.78]] * 2)
    happy = np.array([[0.02, 0.01, 0.02, 0.85, 0.02, 0.03, 0.05]] * 2)

    def summary(face, *, weighted=True, with_voice=True):
        experts = {"audio": voice if with_voice else np.full_like(voice, np.nan), "video": face}
        fused = fusion(experts)
        timeline = pd.DataFrame({"start": [0.0, 3.0], "end": [3.0, 3.4], **dict(zip(labels, fused.T))})
        timeline["modalities"] = ["audio,video", "video"]
        if weighted:
            timeline = with_summary_weights(timeline, fusion.summary_weights(experts))
        return weighted_summary(timeline, labels), timeline

    unweighted, _ = summary(resting, weighted=False)
    kept, timeline = summary(resting)
    assert unweighted.label == "neutral" and kept.label == "sadness"
    assert timeline["summary_weight"].tolist() == [1.0, 0.0] and kept.seconds == 3.0
    _, timeline = summary(happy)
    np.testing.assert_allclose(timeline["summary_weight"][1], fusion.gate("video", happy[1:])[0])
    assert 0.8 < timeline["summary_weight"][1] < 1.0
    _, timeline = summary(resting, with_voice=False)
    assert timeline["summary_weight"].tolist() == [1.0, 1.0]
    assert LateFusion().summary_weights({"audio": voice, "video": resting}).tolist() == [1.0, 1.0]  # no gates


def test_attribution_names_the_modality_that_moved_the_answer():
    """Words that say anger over a voice that leans to sadness: the answer is anger, the words' attribution is the
    largest, and leaving them out changes the label; a modality absent from a row has no attribution there."""
    from fusion.experts.bundle import ExpertBundle

    bundle = ExpertBundle(voice=None, text=None, face=None)
    voice = np.array([[0.05, 0.05, 0.05, 0.05, 0.55, 0.05, 0.2], [0.05, 0.05, 0.05, 0.05, 0.55, 0.05, 0.2]])
    words = np.array([[0.9, 0.02, 0.02, 0.02, 0.02, 0.01, 0.01], [np.nan] * C])
    outputs = {"audio": voice, "text": words, "video": np.full((2, C), np.nan)}
    fused = bundle.fuse(outputs)
    moved = bundle.attribution(outputs, fused)
    assert fused[0].argmax() == 0 and bundle.fuse({"audio": voice})[0].argmax() == 4
    assert moved["text"][0] > moved["audio"][0] and np.isfinite(moved["audio"]).all()
    assert np.isnan(moved["text"][1]) and np.isnan(moved["video"]).all()
