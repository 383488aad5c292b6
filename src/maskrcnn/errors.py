"""The expected errors: bad input the user can fix, each printed by the entry points as one line.

Every message names what to change: the config key, the file, the image or annotation id, the
checkpoint path. ``maskrcnn.cli`` catches exactly these types (``EXPECTED_ERRORS``) and prints
``error: <message>`` instead of a traceback; anything else is a bug and keeps its traceback.
This module imports nothing, so every layer of the package can raise them.
"""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the config key."""


class DatasetError(ValueError):
    """A dataset file is structurally invalid or an image cannot be read.

    Messages always name the offending file and, where relevant, the image id or annotation id,
    so the user can fix the input instead of debugging a crash deep inside training.
    """


class CheckpointError(ValueError):
    """A file is not a usable training checkpoint; the message names the path."""


class ExportError(ValueError):
    """What the user asked cannot be exported (size, opset, format, an example without detections):
    the message says which argument to change."""


class NonFiniteLossError(FloatingPointError):
    """Training stopped because of non-finite losses; the message names the step or the counts."""


class WeightsDownloadError(RuntimeError):
    """A torchvision weight file is neither in the torch hub cache nor downloadable."""


EXPECTED_ERRORS = (ConfigError, DatasetError, CheckpointError, ExportError, NonFiniteLossError, WeightsDownloadError)
