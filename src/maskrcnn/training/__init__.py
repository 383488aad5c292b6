"""Training: the LightningModule (``module``), ``train(cfg)`` (``pipeline``) and what it builds
(``builders``), config checks, callbacks, the run summary, W&B media and dashboard, progress lines."""
