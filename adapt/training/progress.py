"""Progress bars that name the stage and count what it does: "train: 120/400 steps", "validate hq-test: 12/38
batches", "generate: 2/4 shards" (Lightning's own reads "Epoch 0/-2" when a run is set in steps, and a bare
"Predicting 2/2"). tqdm, Lightning's own progress library, is the only one the project uses."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf


class StageProgressBar(TQDMProgressBar):
    """Training as one bar over the run's optimizer steps (epochs do not restart it); validation, test and
    prediction bars named by their stage (and `predict_unit`: "shards", "images")."""

    def __init__(self, predict_stage: str = "predict", predict_unit: str = "batches", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.predict_stage, self.predict_unit = predict_stage, predict_unit

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.set_description("train")
        bar.unit = "step"
        return bar

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        bar = self.train_progress_bar
        if bar.total != convert_inf(total):
            bar.reset(total=convert_inf(total))
        bar.initial = 0
        bar.n = trainer.global_step
        bar.set_description(f"train (epoch {trainer.current_epoch})" if trainer.current_epoch else "train")
        bar.refresh()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_end(self, *_: Any) -> None:
        self.train_progress_bar.close()

    def init_validation_tqdm(self):
        bar = super().init_validation_tqdm()
        bar.set_description("validate" if self.trainer.state.fn != "test" else "test")
        bar.unit = "batch"
        return bar

    def init_predict_tqdm(self):
        bar = super().init_predict_tqdm()
        bar.set_description(self.predict_stage)
        bar.unit = self.predict_unit.rstrip("s") or "batch"
        return bar

    def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        super().on_predict_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self.predict_progress_bar.set_description(self.predict_stage)
