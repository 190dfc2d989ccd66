"""AI verifiers of pseudo-labels: every verifier takes image-phrase pairs with their instances and returns verdicts
(mask quality, MV; exhaustivity, EV) with scores and reasons; their settings live in `verifiers.configs`."""
