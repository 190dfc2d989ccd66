"""Domain recipes: YAML files (demo, food, medical, industrial) and the runner that executes one: data, verifier,
data engine, every arm's training in `fit`'s vocabulary, the report and the export of the best arm."""
