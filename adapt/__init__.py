"""Fine-tuning and evaluation on top of `sam3_model`: dataset readers and converters, transforms, the DataModule,
the `Sam3FineTuner` LightningModule and its one trainer builder, callbacks, the evaluator, and the typed functions
the command line's `predict`, `eval`, `export`, `convert` and `overfit` verbs call. It holds no command line."""
