"""Data: COCO instance datasets, their checks, augmentation, samplers and the Lightning data module.

- ``readers/``: image files -> arrays (``image_io``) and COCO segmentations -> masks (``masks``);
- ``checks/``: what is checked before training (the annotation json, segmentations, RLE, image
  files, setup-time checks of the whole split);
- loading (this folder): ``coco`` (CocoInstanceDataset), ``transforms`` (albumentations),
  ``sampler``, ``collate``, ``datamodule`` (CocoDataModule), ``shapes`` (the generated demo set),
  ``draw`` (overlays);
- ``fit/``: the dataset-fit report (object sizes against the anchors and the training scale).
"""
