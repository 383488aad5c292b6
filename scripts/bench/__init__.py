"""Measuring code behind ``scripts/benchmark.py --task ...``, kept out of the package: the
benchmark tasks, the plain torchvision training loop they compare against, the generated cells set,
a torchvision-compatible builder and the offline W&B run reader."""
