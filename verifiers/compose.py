"""Chain verifiers: every instance must pass every mask verifier, every pair every exhaustivity verifier.

Verifiers run in the order given (cheap ones first). With `cascade`, an instance (or pair) a verifier rejected
is not shown to the later ones (their verdicts are absent), which keeps expensive judges off lost causes.
Exhaustivity is judged on the instances that survived mask verification: EV asks whether the *accepted*
instances cover the phrase, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .base import ExhaustivityVerifier, MaskVerifier, Verdict, VerifyItem


@dataclass
class ItemVerification:
    """What the verifiers said about one item: per instance and for the pair."""

    instance_verdicts: list[list[Verdict]]  # per instance, in verifier order (shorter when cascaded)
    instance_rejected_by: list[str | None]  # per instance: the first verifier that rejected it, or None
    pair_verdicts: list[Verdict] = field(default_factory=list)
    pair_rejected_by: str | None = None

    @property
    def kept(self) -> list[bool]:
        """Per instance: did every mask verifier accept it?"""
        return [by is None for by in self.instance_rejected_by]

    @property
    def pair_accepted(self) -> bool:
        """Did every exhaustivity verifier accept the pair?"""
        return self.pair_rejected_by is None


@dataclass
class VerifierChain:
    """Mask verifiers, then exhaustivity verifiers, over batches of items."""

    mask: Sequence[MaskVerifier] = ()
    exhaustivity: Sequence[ExhaustivityVerifier] = ()
    cascade: bool = True

    def __call__(self, items: Sequence[VerifyItem]) -> list[ItemVerification]:
        """Judge every instance and every pair of `items` (one result per item)."""
        results = [ItemVerification([[] for _ in item.instances], [None] * len(item.instances)) for item in items]
        for verifier in self.mask:
            alive = [[j for j, by in enumerate(r.instance_rejected_by) if by is None or not self.cascade]
                     for r in results]
            asked = [i for i, idx in enumerate(alive) if idx]
            subset = [replace(items[i], instances=[items[i].instances[j] for j in alive[i]]) for i in asked]
            verdicts = verifier.verify_masks(subset) if subset else []
            for i, item_verdicts in zip(asked, verdicts):
                if len(item_verdicts) != len(alive[i]):
                    raise RuntimeError(f"{verifier.name} returned {len(item_verdicts)} verdicts for "
                                       f"{len(alive[i])} instances of {items[i].key}")
                for j, verdict in zip(alive[i], item_verdicts):
                    results[i].instance_verdicts[j].append(verdict)
                    if not verdict.accepted and results[i].instance_rejected_by[j] is None:
                        results[i].instance_rejected_by[j] = verifier.name
        accepted = [replace(item, instances=[inst for inst, keep in zip(item.instances, r.kept) if keep])
                    for item, r in zip(items, results)]
        for verifier in self.exhaustivity:
            asked = [i for i, r in enumerate(results) if r.pair_accepted or not self.cascade]
            verdicts = verifier.verify_exhaustivity([accepted[i] for i in asked]) if asked else []
            if len(verdicts) != len(asked):
                raise RuntimeError(f"{verifier.name} returned {len(verdicts)} verdicts for {len(asked)} pairs")
            for i, verdict in zip(asked, verdicts):
                results[i].pair_verdicts.append(verdict)
                if not verdict.accepted and results[i].pair_rejected_by is None:
                    results[i].pair_rejected_by = verifier.name
        return results
