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
there; weights need data where several modalities are present at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

EPS = 1e-7  # probabilities are clipped to [EPS, 1] before the log: an expert's exact 0 would veto a class for good
ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al., 2017)


@dataclass
class LateFusion:
    """Temperature, weight and class prior per modality; without an entry: temperature 1, weight 1, uniform prior."""

    temperatures: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    priors: dict[str, list[float]] = field(default_factory=dict)

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
        for modality, p in present.items():
            rows = ~np.isnan(p).any(1)
            log_prior = self.log_prior(modality, shape[1])
            w = self.weights.get(modality, 1.0)
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
        return {
            "temperatures": dict(self.temperatures),
            "weights": dict(self.weights),
            "priors": {m: [float(x) for x in p] for m, p in self.priors.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LateFusion:
        return cls(
            {k: float(v) for k, v in data["temperatures"].items()},
            {k: float(v) for k, v in data["weights"].items()},
            {k: [float(x) for x in v] for k, v in data.get("priors", {}).items()},
        )


def calibrated_log_probabilities(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """(N, C) probabilities -> (N, C) log softmax(log p / temperature)."""
    logits = np.log(np.clip(probabilities, EPS, 1.0)) / temperature
    logits -= logits.max(1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(1, keepdims=True))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(log p / T) on (N, C) probabilities and
    (N,) class indices; searched over log T in [-3, 3] (T from 0.05 to 20), golden-section then checked on a grid."""
    labels = np.asarray(labels)

    def nll(log_t: float) -> float:
        return -calibrated_log_probabilities(probabilities, float(np.exp(log_t)))[np.arange(len(labels)), labels].mean()

    grid = np.linspace(-3, 3, 61)
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    low, high = best - 0.1, best + 0.1
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


def fit_weights(probabilities: Mapping[str, np.ndarray], labels: np.ndarray, *, fusion: LateFusion | None = None):
    """Non-negative weight per modality minimising the negative log-likelihood of the pooled probabilities (the
    formula of LateFusion, with fusion's temperatures and priors) on rows where modalities are present together
    ({modality: (N, C)}, NaN rows where absent; labels (N,) class indices). -> {modality: weight}."""
    fusion = fusion or LateFusion()
    names = list(probabilities)
    evidence, log_prior, present = [], [], []
    for name in names:
        p = probabilities[name]
        rows = ~np.isnan(p).any(1)
        prior = fusion.log_prior(name, p.shape[1])
        filled = np.zeros_like(p, dtype=np.float64)
        filled[rows] = fusion.evidence(name, p[rows])
        evidence.append(filled)
        log_prior.append(np.broadcast_to(prior, p.shape))
        present.append(rows)
    evidence = torch.tensor(np.stack(evidence))  # (M, N, C)
    log_prior = torch.tensor(np.stack(log_prior))  # (M, N, C)
    mask = torch.tensor(np.stack(present), dtype=torch.float64)[..., None]  # (M, N, 1)
    target = torch.as_tensor(np.asarray(labels))
    raw = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)  # weight = softplus(raw) / softplus(0)
    optimiser = torch.optim.LBFGS([raw], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        w = (torch.nn.functional.softplus(raw) / np.log(2.0))[:, None, None] * mask
        prior = (w * log_prior).sum(0) / w.sum(0).clamp_min(1e-12)
        pooled = ((w * evidence).sum(0) + prior).log_softmax(-1)
        loss = torch.nn.functional.nll_loss(pooled, target)
        loss.backward()
        return loss

    optimiser.step(closure)
    weights = (torch.nn.functional.softplus(raw) / np.log(2.0)).detach().numpy()
    return {name: float(w) for name, w in zip(names, weights)}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the share of rows in each bin."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(labels)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            error += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(error)
