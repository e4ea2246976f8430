"""Speaker-independent splits of labelled examples (fusion.training.datasets): no speaker on both sides."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fusion.training.datasets import Example


def speaker_folds(examples: Sequence[Example], n_folds: int, *, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Speaker-independent cross-validation: (train indices, test indices) per fold, indices into examples.

    Every speaker is in exactly one test fold and never on both sides of a fold. The result depends only on the
    examples and seed. Speakers are shuffled by seed from sorted order, then dealt largest first, each to the fold
    with the fewest examples so far: speakers of equal size (RAVDESS actors) are dealt round-robin, and a few
    dominant speakers (MELD's six friends) land in different folds.
    """
    by_speaker = _indices_by_speaker(examples)
    if n_folds < 2 or len(by_speaker) < n_folds:
        raise ValueError(f"need 2 <= n_folds <= the number of speakers ({len(by_speaker)}), got {n_folds}")
    # Shuffled rather than sorted: dealing sorted ids round-robin ties folds to patterns in the ids. RAVDESS's odd
    # actors are male and even ones female, so 6 folds over 18 sorted actors would each test one gender only.
    order = sorted(_shuffled(sorted(by_speaker), seed), key=lambda speaker: -len(by_speaker[speaker]))
    sizes = [0] * n_folds
    tests: list[list[int]] = [[] for _ in range(n_folds)]
    for speaker in order:
        fold = sizes.index(min(sizes))
        tests[fold] += by_speaker[speaker]
        sizes[fold] += len(by_speaker[speaker])
    return [(sorted(set(range(len(examples))) - set(test)), sorted(test)) for test in tests]


def speaker_split(
    examples: Sequence[Example], *, validation_fraction: float = 0.15, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) with no speaker on both sides.

    Validation holds about validation_fraction of the speakers (not of the examples), at least one, chosen by seed.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    by_speaker = _indices_by_speaker(examples)
    if len(by_speaker) < 2:
        raise ValueError(f"need at least 2 speakers to split, got {len(by_speaker)}")
    speakers = _shuffled(sorted(by_speaker), seed)
    n_validation = min(len(speakers) - 1, max(1, round(validation_fraction * len(speakers))))
    validation = sorted(i for speaker in speakers[:n_validation] for i in by_speaker[speaker])
    return sorted(set(range(len(examples))) - set(validation)), validation


def _indices_by_speaker(examples: Sequence[Example]) -> dict[str, list[int]]:
    by_speaker: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        by_speaker.setdefault(example.speaker, []).append(index)
    return by_speaker


def _shuffled(items: list[str], seed: int) -> list[str]:
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
