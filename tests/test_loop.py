"""The one training loop (fusion.training.loop.Fit), on a tiny randomly initialised model: shape of the run only."""

from __future__ import annotations

import torch

from fusion.training.loop import Fit


class Scripted(Fit):
    """Validation scores read from a script, so that keeping the best epoch and early stopping can be checked."""

    def __init__(self, scores, **options):
        super().__init__(**options)
        self.scores = list(scores)

    def batches(self, epoch):
        return [torch.randn(4, 3, generator=self.generator) for _ in range(2)]

    def loss(self, batch):
        return self.model(batch).pow(2).mean()

    def validate(self):
        return {"ua": self.scores[self.progress["epoch"]]}


def _fit(tmp_path, scores, **options):
    torch.manual_seed(0)  # the same initial weights in every run
    model = torch.nn.Linear(3, 2)
    return Scripted(
        scores,
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        state_dir=tmp_path,
        **options,
    )


def test_the_best_epoch_is_kept_and_training_stops_after_patience_epochs_without_one(tmp_path):
    result = _fit(tmp_path, [0.3, 0.5, 0.4, 0.45, 0.9], keep="ua", patience=2).run(5)
    assert result.best_epoch == 2
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4], "stopped two epochs after the best"


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = _fit(tmp_path / "whole", [0.1] * 4).run(4)
    _fit(tmp_path / "cut", [0.1] * 4).run(2)
    resumed = _fit(tmp_path / "cut", [0.1] * 4).run(4, resume=True)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
