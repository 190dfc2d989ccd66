"""Benchmark: time of matching + loss per training step as a fraction of the model's forward + backward.

Goal (issue): at 200 queries and 6 decoder layers, matching plus loss should cost at most 5% of the model's
forward plus backward on the same batch.

One training step is split into two parts that together are exactly the step's work:

    T_model     = forward (`run_detector`, DAC on, train mode)
                + backward from the tensors the criterion reads into every parameter
    T_objective = `criterion(leaf_outputs, targets)` + `loss.backward()` to those tensors, as leaves
                  (both matchers on every layer, o2o and o2m branches, the mask terms)

The criterion's inputs are cut from the graph (`detach().requires_grad_()`), so T_objective stops at them;
the model's backward is then driven with the leaf gradients (`torch.autograd.backward(originals, grads)`).
Matching time (both matchers, every layer) and the mask terms' forward are timed inside T_objective.

The batch is B = --queries-per-image phrases of one image; the last phrase is negative (no instance), the
others have --instances boxes each, with binary masks at the input canvas (image_size x image_size), so the
mask loss upsamples to full resolution unless --mask-points is given. With --vision shared (default) the
image goes through the vision encoder once and its features are expanded over the B phrases, as SAM 3
training shares one image's backbone features between its find queries; --vision repeat feeds the image B
times instead (B vision-encoder passes: a larger T_model, so a smaller ratio).

Several objective variants can be timed on the same forward (--variants); the model's backward always uses
the first variant's gradients. Each objective is timed again after the model's backward ("graph freed"): on
a CPU near its RAM limit the held graph makes the full-resolution mask terms' fresh allocations slower.
--objective-only skips the model and times the objective on random outputs of the preset's shapes
(--t-model gives the ratio against a T_model measured before). Results: docs/benchmarks.md.

    python bench/bench_objective.py --preset sam3 --image-size 1008 --queries-per-image 4 --instances 5 --repeats 3
    # 1008 px on a 23 GiB CPU machine fits only with: --activation-checkpointing --dtype bf16
    # on a GPU:                                        --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model
from sam3_model.adapters import enable_activation_checkpointing
from sam3_model.dac import enable_dac
from sam3_model.detector import DetectorOutputs, LayerPredictions, run_detector
from sam3_model.loading import build_processor, load_model
from sam3_model.objective import ObjectiveConfig, Sam3Criterion
from sam3_model.presets import build_config, input_size
from sam3_model.targets import ConceptTargets

PHRASES = ["red square", "blue circle", "green triangle", "yellow star", "white car", "black dog",
           "brown horse", "grey cat", "orange bus", "purple flower", "pink balloon", "silver bike"]


# ----- inputs ---------------------------------------------------------------------------------------------
def make_batch(processor, image_size: int, num_phrases: int, instances: int, vision: str, seed: int):
    """Model inputs for one image x `num_phrases` phrases and random targets (last phrase negative)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(1, 3, image_size, image_size, generator=generator)
    phrases = [PHRASES[i % len(PHRASES)] for i in range(num_phrases)]
    text = processor.tokenizer(phrases, padding="max_length", max_length=32, return_tensors="pt")
    if vision == "repeat":
        pixel_values = pixel_values.expand(num_phrases, -1, -1, -1).contiguous()
    inputs = {"pixel_values": pixel_values, "input_ids": text.input_ids, "attention_mask": text.attention_mask}

    boxes, masks = [], []
    for b in range(num_phrases):
        count = 0 if b == num_phrases - 1 else instances
        centre = torch.rand(count, 2, generator=generator) * 0.6 + 0.2
        size = torch.rand(count, 2, generator=generator) * 0.3 + 0.05
        box = torch.cat([centre, size], dim=-1)  # (T, 4) cxcywh, normalised
        grid = (torch.arange(image_size, dtype=torch.float) + 0.5) / image_size
        lo, hi = (box[:, :2] - box[:, 2:] / 2), (box[:, :2] + box[:, 2:] / 2)
        inside_x = (grid[None] >= lo[:, :1]) & (grid[None] < hi[:, :1])  # (T, W)
        inside_y = (grid[None] >= lo[:, 1:]) & (grid[None] < hi[:, 1:])  # (T, H)
        masks.append((inside_y[:, :, None] & inside_x[:, None, :]).float())  # (T, H, W) filled boxes
        boxes.append(box)
    return inputs, ConceptTargets(boxes, masks)


def vision_leaves(model, pixel_values: torch.Tensor):
    """Run the vision encoder once; return its output with leaf tensors, and the (original, leaf) pairs."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    feats = model.get_vision_features(pixel_values=pixel_values)
    pairs = []

    def cut(t: torch.Tensor) -> torch.Tensor:
        if not t.requires_grad:
            return t
        leaf = t.detach().requires_grad_()
        pairs.append((t, leaf))
        return leaf

    cut_feats = Sam3VisionEncoderOutput(
        last_hidden_state=cut(feats.last_hidden_state),
        fpn_hidden_states=tuple(cut(t) for t in feats.fpn_hidden_states),
        fpn_position_encoding=tuple(cut(t) for t in feats.fpn_position_encoding),
    )
    return cut_feats, pairs


def expand_vision(feats, num_phrases: int):
    """One image's vision features viewed as a batch of `num_phrases` (no copy; backward sums over phrases)."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    expand = lambda ts: tuple(t.expand(num_phrases, *t.shape[1:]) for t in ts)
    return Sam3VisionEncoderOutput(
        last_hidden_state=feats.last_hidden_state.expand(num_phrases, *feats.last_hidden_state.shape[1:]),
        fpn_hidden_states=expand(feats.fpn_hidden_states),
        fpn_position_encoding=expand(feats.fpn_position_encoding),
    )


# ----- cutting the graph at the criterion's inputs ---------------------------------------------------------
FIELDS = ("logits", "boxes_cxcywh", "presence_logits", "masks")


def as_leaves(outputs: DetectorOutputs) -> tuple[DetectorOutputs, list[torch.Tensor], list[torch.Tensor]]:
    """A copy of `outputs` whose tensors are leaves, plus the (original, leaf) tensor lists."""
    originals, leaves = [], []

    def cut(pred: LayerPredictions) -> LayerPredictions:
        values = {}
        for name in FIELDS:
            tensor = getattr(pred, name)
            if tensor is None:
                values[name] = None
                continue
            leaf = tensor.detach().requires_grad_()
            originals.append(tensor)
            leaves.append(leaf)
            values[name] = leaf
        return LayerPredictions(**values)

    cut_outputs = DetectorOutputs(o2o=[cut(p) for p in outputs.o2o], o2m=[cut(p) for p in outputs.o2m])
    return cut_outputs, originals, leaves


# ----- timers ---------------------------------------------------------------------------------------------
class Clock:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class Probe:
    """Wraps a callable and accumulates its wall time (and, for matchers, the number of matches)."""

    def __init__(self, fn, clock: Clock) -> None:
        self.fn, self.clock = fn, clock
        self.seconds, self.calls, self.last_matches = 0.0, 0, 0

    def __call__(self, *args, **kwargs):
        start = self.clock.now()
        result = self.fn(*args, **kwargs)
        self.seconds += self.clock.now() - start
        self.calls += 1
        if hasattr(result, "batch_idx"):
            self.last_matches = len(result)
        return result


def variant_config(name: str, args) -> ObjectiveConfig:
    """ObjectiveConfig of a named variant: official | points:N | nomask | o2m-topk | o2m-topk+points:N."""
    config = ObjectiveConfig(mask_points=args.mask_points)
    for part in name.split("+"):
        if part == "official":
            continue
        if part.startswith("points:"):
            config = dataclasses.replace(config, mask_points=int(part.split(":", 1)[1]))
        elif part == "nomask":
            config = dataclasses.replace(config, masks=False)
        elif part == "o2m-topk":  # every instance takes its top-k o2m queries (no score threshold)
            config = dataclasses.replace(config, o2m_threshold=0.0)
        else:
            raise SystemExit(f"unknown variant part {part!r}")
    return config


# ----- one step -------------------------------------------------------------------------------------------
def backward_to(pairs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
    """Backward from `original` tensors with the gradients their leaf copies received."""
    pairs = [(o, g) for o, g in pairs if g is not None]
    if pairs:
        torch.autograd.backward([o for o, _ in pairs], grad_tensors=[g for _, g in pairs])


def time_objective(criterion, leaf_outputs, leaves, targets, clock, autocast) -> dict:
    """criterion + loss.backward() to the leaves, with the matchers' and mask terms' share; leaves get grads."""
    for leaf in leaves:
        leaf.grad = None
    hungarian, o2m, masks = criterion.matcher, criterion.o2m_matcher, criterion.loss_masks
    for probe in (hungarian, o2m, masks):
        probe.seconds, probe.calls = 0.0, 0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = clock.now()
    with autocast():
        loss, _ = criterion(leaf_outputs, targets)
    mid = clock.now()
    loss.backward()
    end = clock.now()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "objective": end - start, "objective_forward": mid - start, "objective_backward": end - mid,
        "matching": hungarian.seconds + o2m.seconds, "hungarian": hungarian.seconds, "o2m_matcher": o2m.seconds,
        "hungarian_calls": hungarian.calls, "o2m_calls": o2m.calls, "mask_terms_forward": masks.seconds,
        "o2o_final_matches": hungarian.final_matches, "o2m_final_matches": o2m.last_matches,
        "sys_seconds": after.ru_stime - usage.ru_stime, "page_faults": after.ru_minflt - usage.ru_minflt,
        "loss": float(loss.detach()),
    }


def step(model, batch, targets, criteria, args, clock, autocast):
    """One training step, decomposed; returns the model's figures and {metric: seconds} per variant."""
    model.zero_grad(set_to_none=True)
    vision_pairs = []
    t0 = clock.now()
    with autocast():
        if args.vision == "shared":  # vision encoder once, cut from the heads' graph so its time is separable
            feats, vision_pairs = vision_leaves(model, batch["pixel_values"])
            t_vision = clock.now()
            inputs = {"vision_embeds": expand_vision(feats, args.queries_per_image),
                          "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        else:
            t_vision = t0
            inputs = batch
        outputs = run_detector(model, **inputs)
    t1 = clock.now()
    leaf_outputs, originals, leaves = as_leaves(outputs)

    per_variant = {}
    grads = None
    for name, criterion in criteria.items():
        per_variant[name] = time_objective(criterion, leaf_outputs, leaves, targets, clock, autocast)
        if grads is None:  # the first variant drives the model's backward
            grads = [leaf.grad for leaf in leaves]

    t2 = clock.now()
    backward_to(list(zip(originals, grads)))  # heads (and, with --vision repeat, the vision encoder)
    t3 = clock.now()
    backward_to([(o, leaf.grad) for o, leaf in vision_pairs])  # vision encoder (--vision shared)
    t4 = clock.now()
    # The same objective again, now that the model's graph is freed (less memory held: on a CPU near its RAM
    # limit, page faults of fresh allocations slow the held-graph figure; this shows by how much).
    for name, criterion in criteria.items():
        again = time_objective(criterion, leaf_outputs, leaves, targets, clock, autocast)
        per_variant[name].update({f"{k}_graph_freed": again[k] for k in ("objective", "mask_terms_forward",
                                                                           "matching", "sys_seconds")})
    model_times = {
        "model_forward": t1 - t0, "model_backward": t4 - t2, "model": (t1 - t0) + (t4 - t2),
        "vision_forward": t_vision - t0, "vision_backward": t4 - t3,
        "heads_forward": t1 - t_vision, "heads_backward": t3 - t2,
    }
    return model_times, per_variant


class HungarianProbe(Probe):
    """Probe for the Hungarian matcher that also records the match count of the final o2o layer."""

    def __init__(self, fn, clock: Clock) -> None:
        super().__init__(fn, clock)
        self.final_matches = 0

    def __call__(self, pred, targets):
        result = super().__call__(pred, targets)
        if pred.masks is not None:  # the final layer's o2o predictions carry masks (o2m final uses o2m matcher)
            self.final_matches = len(result)
        return result


def build_criteria(names: list[str], args, clock: Clock) -> dict[str, Sam3Criterion]:
    criteria = {}
    for name in names:
        criterion = Sam3Criterion(variant_config(name, args))
        criterion.matcher = HungarianProbe(criterion.matcher, clock)
        criterion.o2m_matcher = Probe(criterion.o2m_matcher, clock)
        criterion.loss_masks = Probe(criterion.loss_masks, clock)
        criteria[name] = criterion
    return criteria


# ----- report ---------------------------------------------------------------------------------------------
def median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def synthetic_step(shapes: dict, targets, criteria, clock, autocast, dtype, device, generator) -> dict:
    """--objective-only: time the objective on random outputs with the model's shapes (no model)."""
    b, q, layers, mask = shapes["batch"], shapes["queries"], shapes["layers"], shapes["mask_size"]

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=generator) * scale).to(device=device, dtype=dtype)

    def layer(final: bool, presence: bool) -> LayerPredictions:
        boxes = torch.cat([torch.rand(b, q, 2, generator=generator) * 0.8 + 0.1,
                           torch.rand(b, q, 2, generator=generator) * 0.4 + 0.05], dim=-1)
        return LayerPredictions(logits=rand(b, q), boxes_cxcywh=boxes.to(device=device, dtype=dtype),
                                presence_logits=rand(b, 1) if presence else None,
                                masks=rand(b, q, mask, mask, scale=3.0) if final else None)

    outputs = DetectorOutputs(o2o=[layer(l == layers - 1, True) for l in range(layers)],
                              o2m=[layer(l == layers - 1, False) for l in range(layers)])
    leaf_outputs, _, leaves = as_leaves(outputs)
    return {name: time_objective(c, leaf_outputs, leaves, targets, clock, autocast) for name, c in criteria.items()}


def build_parser() -> argparse.ArgumentParser:
    """This script's command line (bench/gpu_suite.py parses its defaults to time the objective's share)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sam3-random", help="sam3-random (released architecture, random weights), small, tiny")
    parser.add_argument("--image-size", type=int, default=None, help="input canvas (px); sam3 takes only 1008")
    parser.add_argument("--queries-per-image", type=int, default=4, help="phrases of the image (B); last negative")
    parser.add_argument("--instances", type=int, default=5, help="instances per positive phrase")
    parser.add_argument("--mask-points", type=int, default=None,
                        help="point-sampled mask loss on N points (default: every pixel of the canvas)")
    parser.add_argument("--variants", default="official",
                        help="comma list of objective variants timed on the same forward: official, points:N, "
                             "nomask, o2m-topk, combinations with '+' (the first drives the model backward)")
    parser.add_argument("--vision", choices=("shared", "repeat"), default="shared",
                        help="shared: one vision-encoder pass expanded over the phrases; repeat: B passes")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="checkpoint the ViT and CLIP layers (sam3_model.adapters), e.g. to fit 1008 px in CPU "
                             "RAM; the backward then recomputes their forward")
    parser.add_argument("--objective-only", action="store_true",
                        help="no model: time the objective on random outputs of the preset's shapes")
    parser.add_argument("--t-model", type=float, default=None,
                        help="with --objective-only: a T_model (s) measured before, for the ratio column")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after the warm-up steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = Clock(device)
    load_start = os.getloadavg()

    t = time.perf_counter()
    if args.objective_only:
        model, config = None, build_config(args.preset, args.image_size)
        processor = build_processor(input_size(config))
        num_params = None
    else:
        model, processor = load_model(args.preset, image_size=args.image_size, seed=args.seed)
        enable_dac(model)
        if args.activation_checkpointing:
            enable_activation_checkpointing(model)
        model.to(device).train()
        config = model.config
        num_params = sum(p.numel() for p in model.parameters())
    build_seconds = time.perf_counter() - t
    image_size = input_size(config)
    decoder_cfg = config.detr_decoder_config

    batch, targets = make_batch(processor, image_size, args.queries_per_image, args.instances, args.vision, args.seed)
    batch = {k: v.to(device) for k, v in batch.items()}
    targets = targets.to(device)  # as a data loader would, so the criterion's own .to(device) moves nothing

    if args.dtype == "bf16":
        autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    else:
        autocast = nullcontext

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    criteria = build_criteria(names, args, clock)
    shapes = {"batch": args.queries_per_image, "queries": decoder_cfg.num_queries, "layers": decoder_cfg.num_layers,
              "mask_size": 4 * (image_size // 14)}
    generator = torch.Generator().manual_seed(args.seed)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    model_rows, variant_rows = [], {n: [] for n in names}
    for i in range(args.warmup + args.repeats):
        t = time.perf_counter()
        if args.objective_only:
            model_times = {}
            per_variant = synthetic_step(shapes, targets, criteria, clock, autocast, dtype, device, generator)
        else:
            model_times, per_variant = step(model, batch, targets, criteria, args, clock, autocast)
        label = "warm-up" if i < args.warmup else f"step {i - args.warmup + 1}"
        summary = ", ".join(f"{n}: objective {v['objective']:.3f}s (matching {v['matching']:.3f}s)"
                            for n, v in per_variant.items())
        model_part = (f"model {model_times['model']:.2f}s (fwd {model_times['model_forward']:.2f}s, "
                      f"bwd {model_times['model_backward']:.2f}s); ") if model_times else ""
        print(f"[{label}] {model_part}{summary}; wall {time.perf_counter() - t:.1f}s; "
              f"load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
        if i >= args.warmup:
            if model_times:
                model_rows.append(model_times)
            for n, v in per_variant.items():
                variant_rows[n].append(v)
    load_end = os.getloadavg()

    t_model = median(model_rows, "model") if model_rows else args.t_model
    results = []
    for n in names:
        rows = variant_rows[n]
        r = {k: median(rows, k) for k in rows[0] if k != "loss"}
        r["variant"] = n
        r["ratio"] = r["objective"] / t_model if t_model else None
        r["matching_ratio"] = r["matching"] / t_model if t_model else None
        r["objective_minus_matching"] = r["objective"] - r["matching"]
        results.append(r)

    meta = {
        "preset": args.preset, "image_size": image_size, "params": num_params,
        "num_queries": decoder_cfg.num_queries, "decoder_layers": decoder_cfg.num_layers,
        "width": decoder_cfg.hidden_size, "vit_layers": config.vision_config.backbone_config.num_hidden_layers,
        "queries_per_image": args.queries_per_image, "instances": args.instances, "vision": args.vision,
        "mask_points": args.mask_points, "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
        "device": str(device), "dtype": args.dtype,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_count": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": load_end,
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "build_seconds": build_seconds, "activation_checkpointing": args.activation_checkpointing,
        "objective_only": args.objective_only,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        **({k: median(model_rows, k) for k in model_rows[0] if k != "model"} if model_rows else {}),
        "model": t_model, "model_steps": model_rows, "variant_steps": variant_rows,
    }

    what = "random outputs of" if args.objective_only else f"{num_params / 1e6:.0f}M params,"
    print(f"\n{args.preset} ({what} {image_size} px, {decoder_cfg.num_queries} queries (x2 with DAC), "
          f"{decoder_cfg.num_layers} decoder layers), B={args.queries_per_image} phrases of one image"
          f"{'' if args.objective_only else f' (vision {args.vision})'}"
          f"{', ViT/CLIP checkpointed' if args.activation_checkpointing else ''}, {args.instances} instances per "
          f"positive phrase, {args.dtype} on {meta['device_name']} ({args.threads} threads); median of "
          f"{args.repeats} steps after {args.warmup} warm-up; load average {load_start[0]:.2f} -> {load_end[0]:.2f}\n")
    if model_rows:
        print(f"T_model = forward {meta['model_forward']:.3f} s + backward {meta['model_backward']:.3f} s "
              f"= {t_model:.3f} s")
        if args.vision == "shared":
            print(f"  vision encoder: forward {meta['vision_forward']:.3f} s, backward {meta['vision_backward']:.3f} s"
                  f"{' (recomputes the checkpointed forward)' if args.activation_checkpointing else ''}; "
                  f"rest of the model: forward {meta['heads_forward']:.3f} s, backward {meta['heads_backward']:.3f} s")
    else:
        print(f"T_model: {'given, ' + format(t_model, '.3f') + ' s' if t_model else 'not measured (--objective-only)'}")
    print(f"  peak RSS {meta['peak_rss_gb']:.1f} GB\n")

    def pct(x):
        return f"{100 * x:.2f}%" if x is not None else "n/a"

    freed = "objective_graph_freed" in results[0]
    print("| objective variant | T_objective (s) | fwd / bwd (s) | matching (s): Hungarian + o2m | "
          "mask terms fwd (s) | objective - matching (s) | final matches o2o / o2m | T_objective / T_model |"
          + (" T_objective, graph freed (s) | ratio, graph freed |" if freed else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if freed else ""))
    for r in results:
        row = (f"| {r['variant']} | {r['objective']:.4f} | {r['objective_forward']:.4f} / "
               f"{r['objective_backward']:.4f} | {r['matching']:.4f}: {r['hungarian']:.4f} + {r['o2m_matcher']:.4f} "
               f"| {r['mask_terms_forward']:.4f} | {r['objective_minus_matching']:.4f} | "
               f"{r['o2o_final_matches']:.0f} / {r['o2m_final_matches']:.0f} | {pct(r['ratio'])} |")
        if freed:
            row += f" {r['objective_graph_freed']:.4f} | {pct(r['objective_graph_freed'] / t_model)} |"
        print(row)
    report = {"meta": meta, "results": results}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
