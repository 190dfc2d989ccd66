"""The `sam3-adapt` command line: the front door, above `recipes/`. One verb table (`cli.VERBS`); each verb is a
typed function of a lower layer whose parser jsonargparse builds from its signature."""
