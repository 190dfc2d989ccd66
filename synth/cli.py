"""`sam3-adapt synth run|generate|label|verify|merge|calibrate`: the data engine from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    """Run one stage (or all) of the config into --out."""
    from .config import load_synth_config
    from .engine import SynthRun

    run = SynthRun(load_synth_config(args.config), args.out)
    if args.stage == "run":
        written = run.run()
    elif args.stage == "merge":
        written = run.merge()
    else:
        done = getattr(run, args.stage)()
        print(f"{args.stage}: {done} shard(s) processed; finished shards in {run.run_dir.stage_dir(args.stage)}")
        return 0
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    summary = (Path(args.out) / "summary.md")
    if summary.is_file():
        print(summary.read_text().split("## Mask")[0].split("## Instances")[0].strip())
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    """Measure each configured verifier against a human-labelled sample and pick thresholds."""
    from .calibrate import calibrate_config
    from .config import load_synth_config

    report = calibrate_config(load_synth_config(args.config), args.human, args.out, args.target_precision)
    print(report.read_text() if report.suffix == ".md" else f"wrote {report}")
    return 0


def add_synth_parser(verbs: argparse._SubParsersAction) -> None:
    """Register `synth` and its stage verbs on the main parser."""
    synth = verbs.add_parser("synth", help="data engine: generate/read images, pseudo-label, verify, merge")
    stages = synth.add_subparsers(dest="stage", required=True)
    helps = {"run": "all stages, resuming finished shards", "generate": "make or read the images",
             "label": "pseudo-label with the teacher SAM 3", "verify": "run the mask and exhaustivity verifiers",
             "merge": "write pl.json, syn.json (exact.json), decisions.jsonl and the summary"}
    for stage, text in helps.items():
        p = stages.add_parser(stage, help=text)
        p.add_argument("config", type=Path, help="data-engine YAML (see docs/synth.md)")
        p.add_argument("--out", type=Path, required=True, help="run directory (rerun to resume)")
        p.set_defaults(func=_run)
    cal = stages.add_parser("calibrate", help="measure the verifiers against human labels; pick thresholds")
    cal.add_argument("config", type=Path, help="data-engine YAML whose verify: section to calibrate")
    cal.add_argument("--human", type=Path, required=True, help="human-labelled sample (JSON/YAML, see docs/synth.md)")
    cal.add_argument("--out", type=Path, required=True, help="report directory")
    cal.add_argument("--target-precision", type=float, default=0.9, help="precision of 'accept' to reach")
    cal.set_defaults(func=_calibrate)
