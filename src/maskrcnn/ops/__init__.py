"""Opt-in CPU kernels the network can use in training and inference: ``roi_align_threads``
(RoIAlign split over threads, ``model.roi_align.backward_threads``) and ``memory_format``
(channels_last conv stacks, ``model.channels_last``). They import nothing else of the package."""
