"""Measuring code behind ``scripts/benchmark.py --task ...``: one module per task (see the script's
docstring for which), ``report.py`` for the table they share."""
