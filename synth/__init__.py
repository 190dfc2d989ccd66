"""The data engine: image sources, ontologies, teacher pseudo-labelling and the verifiers' chain, run as sharded,
resumable Lightning prediction, writing SA-Co datasets (pl.json, syn.json, exact.json) with provenance."""
