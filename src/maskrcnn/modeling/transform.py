"""Image batching: normalise, (resize), zero-pad to a multiple of ``size_divisible``.

Resizing reproduces torchvision's ``GeneralizedRCNNTransform`` (same ``interpolate`` call and
the same RNG use for the random training scale) so torchvision checkpoints see identical inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Target masks resized per interpolate call (float32 copy: MASK_RESIZE_CHUNK x H x W x 4 bytes).
MASK_RESIZE_CHUNK = 16


@dataclass
class ImageBatch:
    """A padded batch of images.

    Attributes:
        tensors: Tensor[B, 3, Hp, Wp] float32, normalised, zero padded at the bottom/right.
        image_sizes: per image (H, W) after resize, before padding.
    """

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def _scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Rescale xyxy boxes from an image of ``from_size`` (H, W) to ``to_size`` (H, W).

    Ratios are float32 tensors divided like torchvision's ``resize_boxes`` so that mapped
    boxes are bit-identical.
    """
    ratio_h, ratio_w = (
        torch.tensor(float(new), dtype=torch.float32, device=boxes.device)
        / torch.tensor(float(old), dtype=torch.float32, device=boxes.device)
        for new, old in zip(to_size, from_size, strict=True)
    )
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def map_boxes_to_original(boxes: Tensor, resized_size: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
    """Map boxes predicted on the resized image back to the original image.

    Args:
        boxes: Tensor[N, 4] float, xyxy, pixels of the resized image.
        resized_size: (H, W) of the resized image (``ImageBatch.image_sizes[i]``).
        original_size: (H0, W0) of the image given to ``ImageTransform``.

    Returns:
        Tensor[N, 4] float, xyxy, pixels of the original image.
    """
    return _scale_boxes(boxes, resized_size, original_size)


class ImageTransform(nn.Module):
    """Normalise, resize (eval always; training only if ``resize_in_training``) and batch images.

    Args:
        min_size: target length of the shorter side; a tuple means "random choice per image" in
            training, and the LAST entry in eval (torchvision semantics).
        max_size: cap on the longer side after resizing.
        image_mean / image_std: per-channel RGB normalisation of [0, 1] images.
        size_divisible: padded batch height/width are multiples of this (FPN stride).
        resize_in_training: resize training images too, as torchvision does (the default). Our
            configs set False: the data pipeline (the ``augmentation`` group) resizes training
            images, rasterising polygons at the training size.

    No buffers are registered: the module adds nothing to the model's state_dict.
    """

    def __init__(
        self,
        min_size: int | tuple[int, ...] = 800,
        max_size: int = 1333,
        image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        image_std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        size_divisible: int = 32,
        resize_in_training: bool = True,
    ) -> None:
        super().__init__()
        self.min_size = tuple(min_size) if isinstance(min_size, (list, tuple)) else (int(min_size),)
        if len(self.min_size) == 0:
            raise ValueError("ImageTransform: min_size must not be empty")
        self.max_size = max_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.size_divisible = size_divisible
        self.resize_in_training = resize_in_training

    def forward(
        self, images: list[Tensor], targets: list[dict] | None = None, resize: bool | None = None
    ) -> tuple[ImageBatch, list[dict] | None]:
        """
        Args:
            images: list of Tensor[3, H_i, W_i] float in [0, 1].
            targets: optional ``structures.Target`` dicts; ``boxes`` [N,4], ``crowd_boxes`` [C,4]
                and ``masks`` [N,H,W] uint8 are resized along with the image. The input dicts are
                not modified (shallow copies are returned).
            resize: None resizes in eval mode, and in training with ``resize_in_training``; False
                never does (sliced inference runs tiles at their pixel size, ``inference/slicing.py``).

        Returns:
            (ImageBatch, targets or None)
        """
        if len(images) == 0:
            raise ValueError("ImageTransform: got an empty list of images")
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"ImageTransform: {len(images)} images but {len(targets)} targets")
        if resize is None:
            resize = (not self.training) or self.resize_in_training
        out_images: list[Tensor] = []
        out_targets: list[dict] | None = [] if targets is not None else None
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"ImageTransform: image {i} must be a Tensor[3, H, W], got {shape}")
            if not image.is_floating_point():
                raise ValueError(f"ImageTransform: image {i} must be floating point in [0, 1], got {image.dtype}")
            target = dict(targets[i]) if targets is not None else None
            image = self._normalize(image)
            if resize:
                image, target = self._resize(image, target)
            out_images.append(image)
            if out_targets is not None and target is not None:  # both or neither: targets given
                out_targets.append(target)
        image_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in out_images]
        return ImageBatch(self._pad(out_images), image_sizes), out_targets

    def _normalize(self, image: Tensor) -> Tensor:
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def _choose_min_size(self) -> int:
        if not self.training:
            return self.min_size[-1]
        # One uniform draw per image, even for a single choice: same RNG use as torchvision.
        index = int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())
        return self.min_size[index]

    def _resize(self, image: Tensor, target: dict | None) -> tuple[Tensor, dict | None]:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        short = self._choose_min_size()
        scale = min(short / min(h, w), self.max_size / max(h, w))
        image = F.interpolate(
            image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
        )[0]
        if target is None:
            return image, None
        new_size = (int(image.shape[-2]), int(image.shape[-1]))
        for key in ("boxes", "crowd_boxes"):
            if key in target and target[key] is not None:
                target[key] = _scale_boxes(target[key], (h, w), new_size)
        if "masks" in target and target["masks"] is not None:
            masks = target["masks"]
            if masks.shape[0] == 0:
                target["masks"] = masks.new_zeros((0, *new_size))
            else:
                # a few masks at a time, so the float copy interpolate needs stays small however many
                # masks a large photo has; nearest is per mask, so the values are those of one call
                target["masks"] = torch.cat(
                    [
                        F.interpolate(chunk[:, None].float(), scale_factor=scale, recompute_scale_factor=True)[
                            :, 0
                        ].byte()
                        for chunk in masks.split(MASK_RESIZE_CHUNK)
                    ]
                )
        return image, target

    def _pad(self, images: list[Tensor]) -> Tensor:
        stride = float(self.size_divisible)
        max_h = int(math.ceil(max(im.shape[-2] for im in images) / stride) * stride)
        max_w = int(math.ceil(max(im.shape[-1] for im in images) / stride) * stride)
        batch = images[0].new_zeros((len(images), 3, max_h, max_w))
        for i, im in enumerate(images):
            batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        return batch

    def extra_repr(self) -> str:
        return (
            f"min_size={self.min_size}, max_size={self.max_size}, mean={self.image_mean}, "
            f"std={self.image_std}, size_divisible={self.size_divisible}, "
            f"resize_in_training={self.resize_in_training}"
        )
