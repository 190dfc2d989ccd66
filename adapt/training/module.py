"""`Sam3FineTuner`: the LightningModule that owns SAM 3, its training objective and its optimiser.

A batch holds N images and P phrase queries (`PhraseBatch`). The vision encoder runs once per image; the
detector runs on at most `phrase_chunk_size` queries at a time, each chunk reading its images' features. With
more than one chunk, every chunk's detector pass is activation-checkpointed, so only one chunk's activations
are alive at once and memory no longer grows with the number of phrases per image. Chunk losses are normalised
by the whole batch (its instance count and query count), so they sum to the loss of the unchunked batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from adapt.data.batch import PhraseBatch
from adapt.evaluation.bootstrap import PairTable
from adapt.training.callbacks import DataWaitMonitor, GpuMemoryMonitor, ValidationPanel, images_per_sec_monitor
from adapt.training.optim import OptimizerConfig, build_optimizer
from adapt.training.random_state import RandomStateCheckpoint
from adapt.training.schedules import ScheduleConfig, build_scheduler
from adapt.training.validation import QueryPrediction, ValidationMetrics, compute_metrics, gather_predictions, \
    panel_results, panel_truth, query_predictions
from adapt.settings import MODES, TrainableConfig, ValidationConfig
from sam3_model.adapters import COMPONENTS, LoraSettings, prepare_for_training
from sam3_model.dac import enable_dac
from sam3_model.detector import DetectorOutputs, run_detector
from sam3_model.errors import ConfigError
from sam3_model.loading import DEFAULT_HUB_ID, load_model
from sam3_model.objective import ObjectiveConfig, Sam3Criterion, global_num_boxes, global_num_queries
from sam3_model.presets import input_size



def _index_vision(vision: Sam3VisionEncoderOutput, index: Tensor) -> Sam3VisionEncoderOutput:
    """Features of images `index` (one row per query)."""
    pick = lambda ts: tuple(t.index_select(0, index) for t in ts)  # noqa: E731
    return Sam3VisionEncoderOutput(
        last_hidden_state=vision.last_hidden_state.index_select(0, index),
        fpn_hidden_states=pick(vision.fpn_hidden_states),
        fpn_position_encoding=pick(vision.fpn_position_encoding),
    )


def _identity(hparams: Any) -> dict[str, Any]:
    """The hyper-parameters that decide what a checkpoint's weights are: base model, mode, LoRA shape, input size."""
    trainable = dict(hparams.get("trainable") or {})
    lora = dict(trainable.get("lora") or {})
    return {"model": hparams.get("model"), "trainable.mode": trainable.get("mode"),
            "trainable.lora.preset": lora.get("preset") if trainable.get("mode") == "lora" else None,
            "trainable.lora.r": lora.get("r") if trainable.get("mode") == "lora" else None,
            "image_size": hparams.get("image_size")}


class Sam3FineTuner(L.LightningModule):
    """Fine-tune SAM 3 (LoRA, full or heads-only) with the official objective, optimiser groups and schedule.

    `model`: preset, local `save_pretrained` directory or Hub id. `phrase_chunk_size`: phrase queries per
    detector pass (bounds memory for images with many phrases). Validation computes cgF1, pmF1, IL_MCC and COCO
    box/mask AP against the original annotations.
    """

    def __init__(
        self,
        model: str = DEFAULT_HUB_ID,
        trainable: TrainableConfig = TrainableConfig(),  # noqa: B008 - dataclass defaults are never mutated
        objective: ObjectiveConfig = ObjectiveConfig(),  # noqa: B008
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
        schedule: ScheduleConfig = ScheduleConfig(),  # noqa: B008
        validation: ValidationConfig = ValidationConfig(),  # noqa: B008
        phrase_chunk_size: int = 16,
        image_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.trainable_config, self.objective_config = trainable, objective
        self.optimizer_config, self.schedule_config, self.validation_config = optimizer, schedule, validation
        if self.trainable_config.mode not in MODES:
            raise ConfigError(f"model.trainable.mode must be one of {', '.join(MODES)}, got {self.trainable_config.mode!r}")
        if phrase_chunk_size < 1:
            raise ConfigError(f"model.phrase_chunk_size must be >= 1, got {phrase_chunk_size}")
        self.save_hyperparameters({
            "model": model, "trainable": asdict(self.trainable_config), "objective": asdict(self.objective_config),
            "optimizer": asdict(self.optimizer_config), "schedule": asdict(self.schedule_config),
            "validation": asdict(self.validation_config), "phrase_chunk_size": phrase_chunk_size,
            "image_size": image_size, "seed": seed,
        })
        self.model_source = model
        self.phrase_chunk_size = phrase_chunk_size
        base, self.processor = load_model(model, image_size=image_size, seed=seed)
        self.image_size = input_size(base.config)
        self.model = self._prepare(base)
        self.criterion = Sam3Criterion(self.objective_config)
        self.validation_panel: list = []
        self.flops_per_batch: int | None = None  # read by ThroughputMonitor; not counted (varies with phrases)
        self._val_predictions: list[QueryPrediction] = []
        self._val_loss: dict[int, list[Tensor]] = defaultdict(list)
        self.evaluation_tables: dict[str, PairTable] = {}  # per evaluation set name, after each val/test epoch
        self.evaluation_box_tables: dict[str, PairTable] = {}  # the same pairs, box IoU (`cgF1_box`)

    @classmethod
    def from_checkpoint_hparams(cls, hparams: dict[str, Any]) -> "Sam3FineTuner":
        """Rebuild the module (untrained weights) from the hyper-parameters stored in a checkpoint."""
        h = dict(hparams)
        trainable = dict(h["trainable"])
        lora = LoraSettings(**trainable.pop("lora"))
        return cls(model=h["model"], trainable=TrainableConfig(lora=lora, **trainable),
                   objective=ObjectiveConfig(**h["objective"]), optimizer=OptimizerConfig(**h["optimizer"]),
                   schedule=ScheduleConfig(**h["schedule"]), validation=ValidationConfig(**h["validation"]),
                   phrase_chunk_size=h["phrase_chunk_size"], image_size=h["image_size"], seed=h["seed"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose model differs from the configured one (one line), before any weight is loaded.

        The checkpoint's hyper-parameters never replace the user's config: a run resumes or validates what its
        config says, and a checkpoint of another base model, mode or LoRA is an error rather than a silent swap.
        """
        stored, mine = _identity(checkpoint.get("hyper_parameters") or {}), _identity(self.hparams)
        for key, value in stored.items():
            if value is not None and value != mine.get(key):
                raise ConfigError(f"the checkpoint was trained with model.{key}={value!r}, but the config says "
                                  f"{mine.get(key)!r}; pass the config the checkpoint was trained with "
                                  "(its hyper-parameters never replace the config)")
        own = self.state_dict()
        theirs = checkpoint.get("state_dict") or {}
        missing = [k for k in own if k not in theirs]
        unexpected = [k for k in theirs if k not in own]
        reshaped = [k for k in own if k in theirs and tuple(theirs[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or reshaped:
            example = (missing or unexpected or reshaped)[0]
            raise ConfigError(f"the checkpoint's weights do not fit this model ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected, {len(reshaped)} of another shape, e.g. {example})")

    # ----- model --------------------------------------------------------------------------------------------
    def _prepare(self, base: torch.nn.Module) -> torch.nn.Module:
        """Apply the training mode: LoRA adapters, full fine-tuning, or the heads only."""
        s = self.trainable_config
        if s.mode == "heads":
            frozen = [c for c in COMPONENTS if c != "heads"]
            model = prepare_for_training(base, lora=None, frozen=frozen,
                                         activation_checkpointing=s.activation_checkpointing)
        else:
            model = prepare_for_training(base, lora=s.lora if s.mode == "lora" else None, frozen=s.frozen,
                                         activation_checkpointing=s.activation_checkpointing)
        enable_dac(model)  # one-to-many queries in training mode, as the official decoder
        return model.train()  # loaded models come in eval mode; Lightning toggles train/eval from here

    def _detect(self, vision: Sam3VisionEncoderOutput, input_ids: Tensor, attention_mask: Tensor,
                image_index: Tensor) -> DetectorOutputs:
        """Detector pass of one phrase chunk on its images' features."""
        return run_detector(self.model, vision_embeds=_index_vision(vision, image_index), input_ids=input_ids,
                            attention_mask=attention_mask)

    def _chunks(self, num_queries: int) -> list[tuple[int, int]]:
        size = self.phrase_chunk_size
        return [(start, min(start + size, num_queries)) for start in range(0, num_queries, size)]

    # ----- training -----------------------------------------------------------------------------------------
    def batch_loss(self, batch: PhraseBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective of one batch, summed over phrase chunks, and every logged term."""
        vision = self.model.get_vision_features(pixel_values=batch.pixel_values)
        num_boxes = global_num_boxes(batch.targets, batch.pixel_values.device)
        queries, ranks = global_num_queries(batch.num_queries, batch.pixel_values.device)
        chunks = self._chunks(batch.num_queries)
        total = batch.pixel_values.new_zeros((), dtype=torch.float32)
        logged: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=batch.pixel_values.device))

        def chunk_loss(start: int, stop: int, *features: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            ids, mask, index, targets = batch.query_slice(start, stop)
            n = len(vision.fpn_hidden_states)
            chunk_vision = Sam3VisionEncoderOutput(last_hidden_state=features[0],
                                                   fpn_hidden_states=tuple(features[1 : 1 + n]),
                                                   fpn_position_encoding=tuple(features[1 + n :]))
            outputs = self._detect(chunk_vision, ids, mask, index)
            return self.criterion(outputs, targets, num_boxes=num_boxes, total_queries=queries / ranks,
                                  scale_queries=queries)

        features = (vision.last_hidden_state, *vision.fpn_hidden_states, *vision.fpn_position_encoding)
        for start, stop in chunks:
            if len(chunks) > 1 and torch.is_grad_enabled():
                loss, terms = checkpoint(chunk_loss, start, stop, *features, use_reentrant=False)
            else:
                loss, terms = chunk_loss(start, stop, *features)
            total = total + loss
            for key, value in terms.items():
                if key != "num_boxes":
                    logged[key] = logged[key] + value
        logged["num_boxes"] = num_boxes.detach()
        return total, dict(logged)

    def training_step(self, batch: PhraseBatch, batch_idx: int) -> Tensor:
        """Loss of one batch; logs the total and every term (`train/o2o/loss_ce/layer5`, ...)."""
        loss, terms = self.batch_loss(batch)
        n = batch.num_images
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:  # ~50 terms: only on steps that log
            self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=n)
            self.log("train/phrases_per_image", batch.num_queries / n, batch_size=n)
        return loss

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """`PhraseBatch` knows how to move itself."""
        if isinstance(batch, PhraseBatch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_train_start(self) -> None:
        """Record how many bad dataset entries were skipped (data.on_error=skip), so it is never silent."""
        skipped = getattr(getattr(self.trainer, "datamodule", None), "num_skipped", None)
        if skipped is not None:
            for logger in self.trainer.loggers:
                logger.log_metrics({"data/skipped_entries": float(skipped)}, step=self.trainer.global_step)

    # ----- validation ---------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_predictions, self.validation_panel = [], []
        self._val_loss: dict[int, list[Tensor]] = defaultdict(list)  # per dataloader: (loss x images, images)

    def validation_step(self, batch: PhraseBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loss, and predictions of every query mapped back to the original image (one detector pass per chunk)."""
        vision = self.model.get_vision_features(pixel_values=batch.pixel_values)
        num_boxes = global_num_boxes(batch.targets, batch.pixel_values.device)
        queries, ranks = global_num_queries(batch.num_queries, batch.pixel_values.device)
        v = self.validation_config
        loss = batch.pixel_values.new_zeros((), dtype=torch.float32)
        for start, stop in self._chunks(batch.num_queries):
            ids, mask, index, targets = batch.query_slice(start, stop)
            outputs = self._detect(vision, ids, mask, index)
            loss = loss + self.criterion(outputs, targets, num_boxes=num_boxes, total_queries=queries / ranks,
                                         scale_queries=queries)[0]
            final = outputs.final
            self._val_predictions += query_predictions(
                final.logits, final.presence_logits, final.boxes_xyxy, final.masks, index, batch.phrases[start:stop],
                batch.meta, dataloader_idx, self.image_size, v.min_score, v.max_detections)
        # Logged at epoch end, per dataset and pooled: Lightning refuses one key from several dataloaders.
        self._val_loss[dataloader_idx].append(torch.stack([loss.detach().float() * batch.num_images,
                                                           loss.new_tensor(float(batch.num_images))]))
        self._add_to_panel(batch, dataloader_idx)

    def _add_to_panel(self, batch: PhraseBatch, dataloader_idx: int) -> None:
        """Keep the first validation images with their predictions and annotations for the ValidationPanel."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "val_image"):
            return
        for meta in batch.meta:
            if len(self.validation_panel) >= self.validation_config.panel_images:
                return
            queries = [q for q in self._val_predictions if q.key[:2] == (dataloader_idx, meta.index)]
            image = datamodule.val_image(dataloader_idx, meta.index)
            truth = panel_truth(datamodule.val_samples()[dataloader_idx][meta.index])
            self.validation_panel.append((image, panel_results(queries, self.validation_config.score_threshold),
                                          truth))

    def on_validation_epoch_end(self) -> None:
        """cgF1, pmF1, IL_MCC and COCO AP over the whole validation set (gathered across ranks)."""
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: PhraseBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """As `validation_step`, on the test datasets."""
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        """The validation metrics over the test datasets."""
        self._log_metrics("test")

    def _log_metrics(self, prefix: str) -> None:
        """Loss and metrics pooled over every evaluation set (`val/cgF1`: the checkpoint monitor) and, when there
        are several sets, per set under its name (`val/<name>/cgF1`). Each set's per-pair tables are kept in
        `evaluation_tables[name]` (the evaluation of `cgF1`) and `evaluation_box_tables[name]` (of `cgF1_box`)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        names = datamodule.eval_set_names() if datamodule is not None and hasattr(datamodule, "eval_set_names") \
            else [str(k) for k in sorted(self._val_loss)]
        by_set = self._losses_by_set(len(names))
        values: dict[str, float] = {}
        if by_set[:, 1].sum() > 0:
            values[f"{prefix}/loss"] = float(by_set[:, 0].sum() / by_set[:, 1].sum())
        predictions = gather_predictions(self._val_predictions)
        self._val_predictions = []
        samples = datamodule.val_samples() if datamodule is not None and hasattr(datamodule, "val_samples") else None
        self.evaluation_tables, self.evaluation_box_tables = {}, {}
        if predictions and samples is not None:
            threshold = self.validation_config.score_threshold
            pooled = compute_metrics(predictions, samples, threshold, tables=len(names) == 1)
            values.update({f"{prefix}/{k}": float(v) for k, v in pooled.metrics.items()})
            if len(names) == 1:
                self._keep_tables(names[0], pooled)
            else:
                for idx, name in enumerate(names):
                    subset = [q for q in predictions if q.key[0] == idx]
                    if subset:
                        result = compute_metrics(subset, samples, threshold, tables=True)
                        values.update({f"{prefix}/{name}/{k}": float(v) for k, v in result.metrics.items()})
                        self._keep_tables(name, result)
        if len(names) > 1:
            for idx, name in enumerate(names):
                if by_set[idx, 1] > 0:
                    values[f"{prefix}/{name}/loss"] = float(by_set[idx, 0] / by_set[idx, 1])
        # every rank computed the same values from the gathered predictions and summed losses: the mean is that value
        self.log_dict(values, sync_dist=True)

    def _keep_tables(self, name: str, result: ValidationMetrics) -> None:
        """Keep one evaluation set's per-pair tables (for bootstrap intervals) under its logged name."""
        if result.table is not None and result.box_table is not None:
            self.evaluation_tables[name], self.evaluation_box_tables[name] = result.table, result.box_table

    def _losses_by_set(self, num_sets: int) -> Tensor:
        """(S, 2): summed loss x images and images per evaluation set, summed over ranks."""
        out = torch.zeros(max(num_sets, 1 + max(self._val_loss, default=-1)), 2, device=self.device)
        for idx, rows in self._val_loss.items():
            out[idx] = torch.stack(rows).sum(0).to(out.device)
        self._val_loss = defaultdict(list)
        return self.trainer.strategy.reduce(out, reduce_op="sum").cpu() if self.trainer.world_size > 1 else out.cpu()

    # ----- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with the official parameter groups; the schedule steps every optimizer step."""
        optimizer = build_optimizer(self.model, self.optimizer_config)
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, self.schedule_config, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_callbacks(self) -> list[L.Callback]:
        """Throughput, data wait, GPU memory, learning rate per group, the validation image panel and the
        random-number state of every checkpoint (exact resume)."""
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks: list[L.Callback] = [DataWaitMonitor(), images_per_sec_monitor(), GpuMemoryMonitor(),
                                       ValidationPanel(max_images=self.validation_config.panel_images),
                                       RandomStateCheckpoint()]
        if self.trainer.loggers:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return callbacks
