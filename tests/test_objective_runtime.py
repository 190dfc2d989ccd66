"""The objective under the conditions of real training: bf16 autocast and data-parallel ranks."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adapt.overfit import pair_inputs, toy_pair
from sam3_model.dac import enable_dac
from sam3_model.detector import run_detector
from sam3_model.objective import Sam3Criterion, global_num_boxes
from sam3_model.targets import ConceptTargets
from proc_helpers import free_port


def test_objective_under_bf16_autocast(tiny):
    model, processor = tiny
    enable_dac(model)
    model.train()
    pair = toy_pair(112)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the official trainer autocasts forward and loss
        outputs = run_detector(model, **pair_inputs(processor, pair))
        loss, terms = Sam3Criterion()(outputs, pair.targets)
    assert outputs.final.masks.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in terms.values())
    loss.backward()
    assert model.detr_decoder.box_head.layer1.weight.grad.abs().sum() > 0




def _rank_num_boxes(rank: int, world_size: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    counts = [3, 0]  # rank 0 holds 3 instances, rank 1 only a negative phrase
    targets = ConceptTargets([box.repeat(counts[rank], 1)])
    results[rank] = float(global_num_boxes(targets, torch.device("cpu")))
    dist.destroy_process_group()


def test_num_boxes_is_averaged_over_ranks():
    results = mp.Manager().dict()
    mp.spawn(_rank_num_boxes, args=(2, free_port(), results), nprocs=2, join=True)
    assert dict(results) == {0: 1.5, 1: 1.5}  # (3 + 0) / 2 on every rank, not 3 and the clamp 1
