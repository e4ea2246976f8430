"""Fitting late fusion's parameters (fusion.experts.late_fusion.LateFusion): a temperature per expert on its own
validation data (Guo et al., 2017), and weights per modality where several are present at once."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fusion.experts.late_fusion import LateFusion, calibrated_log_probabilities


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
