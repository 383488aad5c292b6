"""The network, one file per pipeline stage, weight-compatible with torchvision's Mask R-CNN:
``transform`` (normalise, resize, batch) -> ``backbone`` (ResNet + FPN) -> ``rpn`` (``anchors``,
``box_coder``, ``matcher``) -> ``roi_heads`` (``poolers``, ``heads``) -> ``postprocess``;
``mask_rcnn`` ties them together, ``build`` builds one from config values, ``structures`` holds the
typed outputs, ``checkpoint`` / ``weights_download`` load torchvision weights."""
