"""training layer: Lightning only (stage module, stages, datamodule, optim, callbacks, run)."""
