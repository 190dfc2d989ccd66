"""`sam3-adapt synth run|generate|label|verify|merge|calibrate CONFIG.yaml --out DIR`: the data engine's verbs.

Each takes a `SynthConfig` (the YAML file; any key overridden as `--teacher.threshold=0.4`) and a run folder;
a rerun resumes (finished shards are skipped).
"""

from __future__ import annotations

from pathlib import Path

from .config import SynthConfig


def run(config: SynthConfig, out: Path) -> None:
    """Run every stage (generate, label, verify, merge) into `out`, resuming finished shards.

    Args:
        out: the run folder (rerun to resume).
    """
    from .engine import SynthRun

    _report(SynthRun(config, out).run(), out)


def generate(config: SynthConfig, out: Path) -> None:
    """Make (or read) the images of the plan.

    Args:
        out: the run folder (rerun to resume).
    """
    _stage(config, out, "generate")


def label(config: SynthConfig, out: Path) -> None:
    """Pseudo-label the images with the teacher SAM 3 (or the source's exact labels).

    Args:
        out: the run folder (the generate stage done).
    """
    _stage(config, out, "label")


def verify(config: SynthConfig, out: Path) -> None:
    """Run the mask and exhaustivity verifiers on every labelled pair.

    Args:
        out: the run folder (the label stage done).
    """
    _stage(config, out, "verify")


def merge(config: SynthConfig, out: Path) -> None:
    """Write pl.json, syn.json (and exact.json), decisions.jsonl and the summary.

    Args:
        out: the run folder (the verify stage done).
    """
    from .engine import SynthRun

    _report(SynthRun(config, out).merge(), out)


def calibrate(config: SynthConfig, human: Path, out: Path, target_precision: float = 0.9) -> None:
    """Measure each configured verifier against a human-labelled sample and pick thresholds.

    Args:
        human: the human-labelled sample (JSON/YAML, see docs/synth.md).
        out: the report folder.
        target_precision: the precision of "accept" the chosen thresholds reach.
    """
    from .calibrate import calibrate_config

    report = calibrate_config(config, human, out, target_precision)
    print(report.read_text() if report.suffix == ".md" else f"wrote {report}")


def _stage(config: SynthConfig, out: Path, stage: str) -> None:
    from .engine import SynthRun

    run_ = SynthRun(config, out)
    done = getattr(run_, stage)()
    print(f"{stage}: {done} shard(s) processed; finished shards in {run_.run_dir.stage_dir(stage)}")


def _report(written: dict[str, Path], out: Path) -> None:
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    summary = Path(out) / "summary.md"
    if summary.is_file():
        print(summary.read_text().split("## Mask")[0].split("## Instances")[0].strip())
