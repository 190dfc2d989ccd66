"""bench/gpu_suite.py on a CPU with the tiny preset: every section runs, its figures are sane, OOM is a result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import gpu_suite

TINY = ["--preset", "tiny", "--device", "cpu", "--image-size", "112", "--steps", "1", "--warmup", "1",
        "--workers", "0"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, list[int]]:
    """One in-process run whose training step runs out of memory at 4 images or more."""
    out = tmp_path_factory.mktemp("suite")
    real_step = gpu_suite.train_step
    attempted: list[int] = []

    def step_or_oom(module, optimizer, batch, autocast):
        attempted.append(batch.num_images)
        if batch.num_images >= 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB (injected by the test)")
        return real_step(module, optimizer, batch, autocast)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gpu_suite, "train_step", step_or_oom)
        returned = gpu_suite.main([*TINY, "--max-lora-batch", "8", "--out", str(out)])
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["sections"].keys() == returned["sections"].keys()
    return report, (out / "gpu_suite.md").read_text(), attempted


def rows(report: dict, section: str) -> list[dict]:
    return report["sections"][section]["rows"]


def by_config(report: dict) -> dict[str, dict]:
    return {row["config"]: row for section in report["sections"].values() for row in section["rows"]}


def test_every_section_and_machine_info(suite):
    report, _, _ = suite
    assert list(report["sections"]) == ["full", "objective", "inference", "lora", "data"]
    meta = report["meta"]
    assert meta["device"] == "cpu" and meta["image_size"] == 112 and meta["sections_done"] == list(report["sections"])
    assert meta["machine"]["cpu_count"] >= 1 and meta["torch"] == torch.__version__ and meta["transformers"]


def test_training_rows_have_throughput_flops_and_memory(suite):
    report, _, _ = suite
    ok = [r for s in ("full", "lora") for r in rows(report, s) if r["status"] == "ok"]
    assert len(ok) == 6  # full: batch 1 and 2, with and without checkpointing; LoRA: batch 1 and 2
    for row in ok:
        assert row["images_per_s"] > 0 and row["step_s"] > 0 and len(row["step_times_s"]) == 1
        assert row["flops_per_step"] > 0 and row["model_flops_per_step"] > 0
        assert row["peak_memory_bytes"] > 0 and "RSS" in row["peak_memory_kind"]
        assert row["mfu"] is None and row["hfu"] is None and row["mfu_reason"].startswith("CPU")


def test_flops_scale_with_the_batch_and_count_the_recompute(suite):
    report, _, _ = suite
    rows_ = by_config(report)
    for prefix, suffix in (("full FT", ""), ("full FT", ", act. ckpt"), ("LoRA all_attn r16", "")):
        one, two = rows_[f"{prefix}, batch 1{suffix}"], rows_[f"{prefix}, batch 2{suffix}"]
        assert two["flops_per_step"] == pytest.approx(2 * one["flops_per_step"], rel=0.1)
        assert two["model_flops_per_step"] == 2 * one["model_flops_per_step"]
    plain, checkpointed = rows_["full FT, batch 1"], rows_["full FT, batch 1, act. ckpt"]
    assert checkpointed["flops_per_step"] > plain["flops_per_step"]  # the backward recomputes the ViT and CLIP
    assert checkpointed["model_flops_per_step"] == plain["flops_per_step"]  # MFU credits no recompute
    lora, full = rows_["LoRA all_attn r16, batch 1"], plain
    assert lora["flops_per_step"] < full["flops_per_step"]  # no weight gradients for frozen weights


def test_out_of_memory_is_a_result_and_the_suite_goes_on(suite):
    report, markdown, _ = suite
    rows_ = by_config(report)
    for config in ("full FT, batch 4", "full FT, batch 4, act. ckpt", "LoRA all_attn r16, batch 4"):
        assert rows_[config]["status"] == "OOM" and "out of memory" in rows_[config]["error"]
        assert "images_per_s" not in rows_[config]
        assert any(line.startswith(f"| {config} | OOM |") for line in markdown.splitlines())
    assert rows_["full FT, batch 1, act. ckpt"]["status"] == "ok"  # after the first OOM


def test_lora_batch_search_stops_at_the_first_oom(suite):
    report, _, attempted = suite
    lora = report["sections"]["lora"]
    assert lora["tried"] == [1, 2, 4] and lora["largest_batch"] == 2 and lora["stopped"] == "out of memory at batch 4"
    assert 8 not in attempted
    assert [r["largest_that_fits"] for r in lora["rows"]] == [False, True, False]
    assert 0 < lora["trainable_params"] < report["meta"]["params"]


def test_inference_objective_and_data_rows(suite):
    report, _, _ = suite
    image, extra, batched = rows(report, "inference")
    assert image["latency_s"] > 0 and image["images_per_s"] == pytest.approx(1 / image["latency_s"])
    assert extra["latency_s"] > 0 and batched["phrases_per_call"] == gpu_suite.INFERENCE_PHRASE_BATCH
    (objective,) = rows(report, "objective")
    assert 0 < objective["objective_share"] < 1 and 0 < objective["matching_share"] < objective["objective_share"]
    assert objective["step_s"] == pytest.approx(objective["t_model_s"] + objective["t_objective_s"])
    (data,) = rows(report, "data")
    assert data["status"] == "ok" and data["batch"] == 2 and 0 <= data["wait_share"] < 1
    assert data["wait_s_mean"] > 0 and data["step_s_mean"] > 0 and data["images_per_s"] > 0


def test_markdown_has_one_row_per_measurement(suite):
    report, markdown, _ = suite
    table = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| config")]
    configs = [row["config"] for section in report["sections"].values() for row in section["rows"]]
    assert [line.split(" | ")[0][2:] for line in table] == configs
    assert "| config | images/s | MFU | peak memory | notes |" in markdown
    assert "| full FT, batch 1 | " in markdown and " | null | " in markdown  # MFU null on a CPU


def test_a_run_stopped_mid_way_keeps_what_it_finished(tmp_path, monkeypatch):
    real_prompt_tensors, calls = gpu_suite.prompt_tensors, []

    def killed_at_the_second_row(*args, **kwargs):  # stops the run inside the inference section
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_prompt_tensors(*args, **kwargs)

    monkeypatch.setattr(gpu_suite, "prompt_tensors", killed_at_the_second_row)
    with pytest.raises(KeyboardInterrupt):
        gpu_suite.main([*TINY, "--sections", "objective,inference", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert list(report["sections"]) == ["objective", "inference"] and report["meta"]["sections_done"] == ["objective"]
    inference = report["sections"]["inference"]
    assert inference["partial"] and [r["kind"] for r in inference["rows"]] == ["image"]
    markdown = (tmp_path / "gpu_suite.md").read_text()
    assert "| inference: image (vision + 1 phrase) |" in markdown and "Not finished: inference." in markdown


def test_peak_flops_table():
    cuda = torch.device("cuda")
    assert gpu_suite.peak_bf16_flops(cuda, "NVIDIA H100 80GB HBM3")[0] == 989e12
    assert gpu_suite.peak_bf16_flops(cuda, "NVIDIA H100 PCIe")[0] == 756e12
    assert gpu_suite.peak_bf16_flops(cuda, "NVIDIA H200")[0] == 989e12
    assert gpu_suite.peak_bf16_flops(cuda, "NVIDIA B200")[0] == 2250e12
    assert gpu_suite.peak_bf16_flops(cuda, "NVIDIA A100-SXM4-80GB")[0] == 312e12
    peak, reason = gpu_suite.peak_bf16_flops(cuda, "Some Future GPU")
    assert peak is None and "unknown device" in reason
    assert gpu_suite.peak_bf16_flops(torch.device("cpu"), "AMD EPYC")[0] is None


def test_recipe_plan_estimates_from_a_suite_result(suite, tmp_path):
    """The suite's JSON is what `recipe plan --step_times` reads: its fastest step per mode and batch, ranked before
    the shipped figures."""
    from recipes.config import load_recipe
    from recipes.plan import STEP_TIMES, plan_text, read_step_times

    report, _, _ = suite
    path = tmp_path / "gpu_suite.json"
    path.write_text(json.dumps(report))
    entries = read_step_times(path)
    assert {(e.mode, e.batch_size) for e in entries} == {("full", 1), ("full", 2), ("lora", 1), ("lora", 2)}
    assert all(e.architecture == "tiny" and e.image_size == 112 and e.device == "cpu" for e in entries)
    fastest = min((r for r in rows(report, "full") if r["batch"] == 2 and r["status"] == "ok"),
                  key=lambda r: r["step_s"])
    assert next(e for e in entries if (e.mode, e.batch_size) == ("full", 2)).seconds_per_step == fastest["step_s"]
    recipe = load_recipe("demo", {"base_model": "tiny", "train": {"image_size": 112, "batch_size": 2}})
    text = plan_text(recipe, None, [*entries, *read_step_times(STEP_TIMES)])
    assert f"from {fastest['step_s']:g} s per step at batch 2, full, 112 px" in text
    assert "measured by bench/gpu_suite.py" in text
