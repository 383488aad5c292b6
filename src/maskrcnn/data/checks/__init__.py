"""Checks of COCO input that run before any training step, each failing with a message that names
the file and the image or annotation id: ``annotation_file`` (the json), ``segmentation`` and
``rle`` (annotation geometry, batched), ``images`` (unreadable image files and the skip policy),
``setup`` (whole-split checks the data module runs in ``setup``)."""
