"""Error type for bad dataset input (annotation files and image files)."""


class DatasetError(ValueError):
    """A dataset file is structurally invalid or an image cannot be read.

    Messages always name the offending file and, where relevant, the image id or annotation id,
    so the user can fix the input instead of debugging a crash deep inside training.
    """
