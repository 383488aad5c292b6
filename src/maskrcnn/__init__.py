"""Mask R-CNN (ResNet/ResNeXt + FPN) trained with PyTorch Lightning and configured with Hydra.

Layers, lowest first; a module imports only from its own layer or below:

- ``errors`` (the expected errors), ``ops`` (opt-in CPU kernels);
- ``modeling`` (the network, one file per pipeline stage, weight-compatible with torchvision);
- ``losses`` (the criterion's terms), ``evaluation`` (COCO AP), ``data`` (reading, checking and
  augmenting COCO data), ``schedulers``;
- ``run_checkpoint`` (build a network from a training checkpoint);
- ``inference`` (predict, export, the CPU inference copy in ``inference.optimize``);
- ``training`` (LightningModule, ``train(cfg)``, callbacks, run summary), ``loggers``;
- ``cli`` / ``cli_args`` (what the entry points in ``src/`` and ``scripts/`` share).
"""
