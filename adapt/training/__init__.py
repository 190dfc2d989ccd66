"""Lightning fine-tuning of SAM 3: the LightningModule, optimiser and schedule, callbacks, loggers and the CLI."""
