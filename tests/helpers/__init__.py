"""Code the tests share that is not a fixture: config composition, tiny models, checkpoints, scripts.

Importable as ``helpers`` because pyproject's ``[tool.pytest.ini_options] pythonpath`` holds
``tests``; the fixtures built from it live in ``tests/conftest.py``.
"""
