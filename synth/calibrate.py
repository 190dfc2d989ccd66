"""`sam3-adapt synth calibrate`: measure each configured verifier against a human-labelled sample.

Each mask verifier judges the sample's `mask` entries and each exhaustivity verifier its `exhaustivity` entries,
alone (no cascade); the report gives accuracy, precision and recall of "accept", agreement per option, and the
threshold on accept_score that reaches the target precision. Copy the chosen thresholds into the config's
`verify:` section.
"""

from __future__ import annotations

import os
from pathlib import Path

from sam3_model.errors import ConfigError
from verifiers.calibration import evaluate_verifiers, read_human_sample, write_calibration_report

from .config import SynthConfig


def calibrate_config(config: SynthConfig, human: str | os.PathLike[str], out: str | os.PathLike[str],
                     target_precision: float = 0.9) -> Path:  # fmt: skip
    """Calibrate the verifiers of `config.verify` on the sample at `human`; returns the Markdown report."""
    if not 0 < target_precision <= 1:
        raise ConfigError(f"--target-precision must be in (0, 1], got {target_precision}")
    sample = read_human_sample(human)
    chain, _ = config.verify.build_chain()
    if not chain.mask and not chain.exhaustivity:
        raise ConfigError("the config's verify: section sets no verifier; nothing to calibrate")
    results = evaluate_verifiers(sample, chain.mask, chain.exhaustivity, target_precision)
    if not results:
        raise ConfigError(f"{human}: no entry matches a configured verifier (mask entries need a mask verifier, "
                          "exhaustivity entries an exhaustivity verifier)")
    return write_calibration_report(results, Path(out))
