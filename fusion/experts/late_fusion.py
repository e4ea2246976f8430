"""Late fusion of the experts: each modality's probabilities, temperature-calibrated, pooled log-linearly.

For the modalities m present in a segment, with q_m = softmax(log p_m / T_m) the expert's probabilities calibrated
by its temperature T_m, pi_m the class prior it learnt from its training data, and w_m its weight:

    log p(c)  =  sum_m  w_m * (log q_m(c) - log pi_m(c))  +  log pi(c)  -  log Z,
    log pi(c) =  sum_m  w_m * log pi_m(c) / sum_m w_m

the product rule for experts that see independent evidence (Kittler et al., 1998): each expert's posterior over its
prior is its evidence, and the prior is counted once, not once per expert. Without the division, a text expert
trained on MELD (47% neutral) would add MELD's lean towards neutral to every segment it speaks in. A segment with
one modality gets that expert's calibrated probabilities exactly (w = 1), so the fused model on a one-modality
corpus is as accurate as the matching expert. Temperatures are fitted per expert on its own validation data (Guo et
al., 2017: one scalar minimising the negative log-likelihood) and priors are the mean calibrated probabilities
there; weights need data where several modalities are present at once. Fitting them: fusion.training.calibration.

An expert may also be gated by its own evidence that there is any emotion to see (``gates``, an exponent gamma_m per
modality): its weight in a row becomes w_m * (1 - q_m(neutral))^gamma_m. Words or a face that carry no emotion
(bland sentences, a resting face: the expert says "neutral") then count as the absence of evidence, not as
evidence for neutral against the voice; where they do carry emotion, q_m(neutral) is small and they count in full.
A gated expert's prior fades with its weight, so a row whose gated experts all say "neutral" is the other experts'
answer exactly. Gates apply only in rows where an expert without one (the voice) speaks: words alone, or a face
alone, are still what the recording has to go by.

With ``neutral_as_absence``, a gated expert that sees less emotion than it expects a priori (q_m(neutral) >=
pi_m(neutral)) counts not at all in that row (weight 0: neither its evidence nor its prior). Words can then tell the
voice that there is emotion, and which, but bland words never argue that there is none, nor lean the voice's close
calls with what little they say about the other classes. ``absence_ratio`` (rho, default 1) moves that boundary:
the expert counts only where q_m(neutral) < rho * pi_m(neutral), so with rho < 1 words must see clearly more
emotion than they expect a priori before they argue with the voice.

With ``certainty`` (kappa), a gated expert's weight is also multiplied by how sure it is which emotion it sees,
(max over the emotions c of q_m(c) / (1 - q_m(neutral)))^kappa: words that say "there is emotion here" but spread it
over anger, happiness and surprise (Whisper's "!" after a neutral sentence read loudly: the voice's own evidence,
heard again through the punctuation) barely move the voice's choice among the emotions; words that name one emotion
count nearly in full.

A recording's summary weighs its segments by the same rule (:meth:`LateFusion.summary_weights`): where the voice
speaks somewhere in the recording, a segment that only gated experts speak for (a face between utterances, words the
voice expert had too little sound for) counts as much as its largest gate would weigh it beside the voice, so a
resting face after the last word is no evidence that the speaker is calm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fusion.labels import EMOTIONS

NEUTRAL = EMOTIONS.index("neutral")  # the column a gate reads: the expert's probability that it sees no emotion
EPS = 1e-7  # probabilities are clipped to [EPS, 1] before the log: an expert's exact 0 would veto a class for good


@dataclass
class LateFusion:
    """Temperature, weight, class prior and gate per modality; without an entry: temperature 1, weight 1, uniform
    prior, no gate."""

    temperatures: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    priors: dict[str, list[float]] = field(default_factory=dict)
    gates: dict[str, float] = field(default_factory=dict)  # modality -> gamma: weight x (1 - q(neutral))^gamma
    neutral_as_absence: bool = False  # a gated expert that sees less emotion than its prior counts not at all
    absence_ratio: float = 1.0  # with neutral_as_absence: it counts only where q(neutral) < ratio x pi(neutral)
    certainty: float = 0.0  # kappa: a gated expert's weight x (its top emotion's share of q(not neutral))^kappa

    def __call__(self, probabilities: Mapping[str, np.ndarray | None]) -> np.ndarray:
        """{modality: (N, C) probabilities, or NaN rows / None where it is absent} -> (N, C) pooled probabilities;
        rows where no modality is present are NaN."""
        present = {m: p for m, p in probabilities.items() if p is not None}
        if not present:
            raise ValueError("late fusion needs at least one modality's probabilities")
        shape = next(iter(present.values())).shape
        total = np.zeros(shape, np.float64)
        prior = np.zeros(shape, np.float64)  # sum of w_m log pi_m over the modalities present in each row
        weight = np.zeros((shape[0], 1), np.float64)
        seen = np.zeros(shape[0], bool)
        ungated = np.zeros(shape[0], bool)  # rows where an expert without a gate speaks: there the gates apply
        for modality, p in present.items():
            if modality not in self.gates:
                ungated |= ~np.isnan(p).any(1)
        for modality, p in present.items():
            rows = ~np.isnan(p).any(1)
            log_prior = self.log_prior(modality, shape[1])
            w = np.full(rows.sum(), self.weights.get(modality, 1.0))
            if modality in self.gates:
                w = np.where(ungated[rows], w * self.gate(modality, p[rows]), w)
            w = w[:, None]
            total[rows] += w * self.evidence(modality, p[rows])
            prior[rows] += w * log_prior
            weight[rows] += w
            seen |= rows
        total += prior / np.maximum(weight, 1e-12)
        total -= total.max(1, keepdims=True)
        pooled = np.exp(total)
        pooled /= pooled.sum(1, keepdims=True)
        pooled[~seen] = np.nan
        return pooled

    def gate(self, modality: str, probabilities: np.ndarray) -> np.ndarray:
        """(N, C) a gated expert's probabilities -> (N,) (1 - q(neutral))^gamma: how much emotion it sees; with
        neutral_as_absence 0 where it sees less than its prior expects (q(neutral) >= absence_ratio x pi(neutral));
        with certainty, times how sure it is which emotion."""
        calibrated = np.exp(calibrated_log_probabilities(probabilities, self.temperatures.get(modality, 1.0)))
        q = calibrated[:, NEUTRAL]
        weight = np.clip(1.0 - q, 0.0, 1.0) ** self.gates[modality]
        if self.certainty:
            emotions = np.delete(calibrated, NEUTRAL, 1)
            weight = weight * (emotions.max(1) / np.maximum(emotions.sum(1), EPS)) ** self.certainty
        if self.neutral_as_absence:
            expected = np.exp(self.log_prior(modality, probabilities.shape[1]))[NEUTRAL]
            weight = np.where(q >= self.absence_ratio * expected, 0.0, weight)
        return weight

    def summary_weights(self, probabilities: Mapping[str, np.ndarray | None]) -> np.ndarray:
        """{modality: (N, C) probabilities of one recording's segments, NaN rows / None where absent} -> (N,) how
        much each segment counts in the recording's summary, a factor on its seconds: 1 where an expert without a
        gate speaks; a segment that only gated experts speak for, in a recording where an ungated expert speaks
        somewhere, the largest of their gates (0 where each sees no more emotion than its prior); 1 for every
        segment of a recording that no ungated expert speaks in (what it has to go by); 0 where no expert speaks."""
        present = {m: p for m, p in probabilities.items() if p is not None}
        if not present:
            raise ValueError("summary weights need at least one modality's probabilities")
        n = len(next(iter(present.values())))
        rows = {m: ~np.isnan(p).any(1) for m, p in present.items()}
        ungated = np.zeros(n, bool)
        for modality, speaks in rows.items():
            if modality not in self.gates:
                ungated |= speaks
        seen = np.logical_or.reduce(list(rows.values()))
        if not ungated.any():
            return seen.astype(np.float64)
        weights = ungated.astype(np.float64)
        for modality, speaks in rows.items():
            alone = speaks & ~ungated
            if modality in self.gates and alone.any():
                weights[alone] = np.maximum(weights[alone], self.gate(modality, present[modality][alone]))
        return weights

    def evidence(self, modality: str, probabilities: np.ndarray) -> np.ndarray:
        """(N, C) an expert's probabilities -> (N, C) float64 its evidence: log q_m - log pi_m above."""
        log_q = calibrated_log_probabilities(probabilities, self.temperatures.get(modality, 1.0))
        return log_q - self.log_prior(modality, probabilities.shape[1])

    def pooled_prior(self, modalities, n_classes: int) -> np.ndarray:
        """(n_classes,) the prior that pooling these modalities assumes: pi(c) above, normalised."""
        weights = [self.weights.get(m, 1.0) for m in modalities]
        log_pi = sum(w * self.log_prior(m, n_classes) for m, w in zip(modalities, weights)) / sum(weights)
        pi = np.exp(log_pi - log_pi.max())
        return pi / pi.sum()

    def log_prior(self, modality: str, n_classes: int) -> np.ndarray:
        prior = np.asarray(self.priors.get(modality, np.full(n_classes, 1.0 / n_classes)), np.float64)
        if prior.shape != (n_classes,):
            raise ValueError(f"the {modality} prior has {prior.shape} classes, its probabilities {n_classes}")
        return np.log(np.clip(prior / prior.sum(), EPS, 1.0))

    def to_dict(self) -> dict:
        return (
            {
                "temperatures": dict(self.temperatures),
                "weights": dict(self.weights),
                "priors": {m: [float(x) for x in p] for m, p in self.priors.items()},
            }
            | ({"gates": dict(self.gates)} if self.gates else {})
            | ({"neutral_as_absence": True} if self.neutral_as_absence else {})
            | ({"absence_ratio": self.absence_ratio} if self.absence_ratio != 1.0 else {})
            | ({"certainty": self.certainty} if self.certainty else {})
        )

    @classmethod
    def from_dict(cls, data: Mapping) -> LateFusion:
        return cls(
            {k: float(v) for k, v in data["temperatures"].items()},
            {k: float(v) for k, v in data["weights"].items()},
            {k: [float(x) for x in v] for k, v in data.get("priors", {}).items()},
            {k: float(v) for k, v in data.get("gates", {}).items()},
            bool(data.get("neutral_as_absence", False)),
            float(data.get("absence_ratio", 1.0)),
            float(data.get("certainty", 0.0)),
        )


def calibrated_log_probabilities(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """(N, C) probabilities -> (N, C) log softmax(log p / temperature)."""
    logits = np.log(np.clip(probabilities, EPS, 1.0)) / temperature
    logits -= logits.max(1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(1, keepdims=True))
