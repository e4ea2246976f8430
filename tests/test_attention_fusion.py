"""The learned fusion over the experts' outputs (fusion.experts.attention): synthetic probabilities, tiny models."""

import numpy as np
import torch

from fusion.experts import attention
from fusion.experts.late_fusion import LateFusion
from fusion.training import attention as training

C = 7


def _pool(n, *, accuracy, confidence, rng):
    """(n, C) probabilities whose argmax is the label with chance `accuracy`, and the (n,) labels."""
    labels = rng.integers(0, C, n)
    guess = np.where(rng.random(n) < accuracy, labels, rng.integers(0, C, n))
    p = np.full((n, C), (1 - confidence) / (C - 1), np.float32)
    p[np.arange(n), guess] = confidence
    return p, labels


def _pools(rng, n=700):
    return {
        "audio": _pool(n, accuracy=0.3, confidence=0.95, rng=rng),  # confidently wrong most of the time
        "text": _pool(n, accuracy=0.6, confidence=0.5, rng=rng),
        "video": _pool(n, accuracy=0.6, confidence=0.5, rng=rng),
    }


def test_the_untrained_model_is_late_fusion_and_padding_changes_nothing():
    rng = np.random.default_rng(0)
    late = LateFusion(temperatures={"text": 1.5}, priors={"video": list(np.arange(1, C + 1) / 28)})
    model = attention.AttentionFusion(attention.AttentionFusionConfig(), late).eval()
    examples, _ = training.paired_examples(_pools(rng), 50, rng, modality_dropout=0.5)
    assert {len(e) for e in examples} > {1}, "dropout leaves one, two or three modalities"
    fused = attention.predict_proba(model, examples)
    np.testing.assert_allclose(fused, attention.late_fusion_proba(late, examples), atol=1e-5)
    # a trained head reads the tokens; an example's output does not depend on the others padded beside it
    torch.nn.init.normal_(model.head.weight)
    alone = np.concatenate([attention.predict_proba(model, [e]) for e in examples[:10]])
    np.testing.assert_allclose(attention.predict_proba(model, examples)[:10], alone, atol=1e-5)


def test_fitting_learns_to_distrust_an_overconfident_modality():
    """Late fusion with temperature 1 lets the confidently wrong audio outvote the others; the learned correction
    should beat it on held-out pairs, and the chosen epoch is a trained one."""
    rng = np.random.default_rng(1)
    late = LateFusion()
    validation = training.paired_examples(_pools(rng), 1500, rng)
    config = training.AttentionTrainConfig(epochs=6, examples_per_epoch=3000, seed=0)
    result = training.fit(late, _pools(rng), validation, config)
    assert result.epoch > 0 and min(result.history[1:]) < result.history[0]
    test, labels = training.paired_examples(_pools(rng), 1500, rng)
    learned = (attention.predict_proba(result.model, test).argmax(1) == labels).mean()
    floor = (attention.late_fusion_proba(late, test).argmax(1) == labels).mean()
    assert learned > floor + 0.05, (learned, floor)


def test_a_learned_fusion_saved_and_loaded_fuses_rows_as_before(tmp_path):
    """Row-wise fusion (the bundle's path): each row one example of the modalities present; NaN rows stay NaN."""
    rng = np.random.default_rng(3)
    late = LateFusion(temperatures={"audio": 0.9})
    torch.manual_seed(0)
    model = attention.AttentionFusion(attention.AttentionFusionConfig(), late)
    torch.nn.init.normal_(model.head.weight, std=0.5)  # not the identity on late fusion
    outputs = {m: rng.dirichlet(np.ones(7), 6) for m in ("audio", "text")}
    outputs["text"][2] = np.nan
    outputs["audio"][5] = outputs["text"][5] = np.nan
    fused = model.eval().fuse(outputs)
    loaded = attention.AttentionFusion.load(model.save(tmp_path / "fusion"), late)
    np.testing.assert_allclose(loaded.fuse(outputs), fused, atol=1e-6, equal_nan=True)
    assert np.isnan(fused[5]).all() and not np.isnan(fused[:5]).any()
    assert np.abs(fused[:5] - late(outputs)[:5]).max() > 1e-3  # the learned correction is there
