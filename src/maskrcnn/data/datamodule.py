"""LightningDataModule for COCO-format instance segmentation (optionally synthetic shapes)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from maskrcnn.data.batching import seed_worker, training_batch_sampler
from maskrcnn.data.checks.images import check_image_files, validate_options
from maskrcnn.data.checks.setup import (
    augmentation_options,
    check_class_counts,
    check_mask_memory,
    check_resize_keeps_instances,
    check_training_instances,
    pipeline_scale,
    warn_if_nothing_to_evaluate,
)
from maskrcnn.data.coco import CocoInstanceDataset
from maskrcnn.data.collate import collate
from maskrcnn.data.copy_paste import CopyPaste
from maskrcnn.data.repeat_factor_sampler import epoch_length, training_repeat_factors
from maskrcnn.data.resumable_loader import ResumableDataLoader, TrainPosition
from maskrcnn.data.sampler import (
    InferenceSampler,
)
from maskrcnn.data.shapes import generate_shapes
from maskrcnn.data.shapes import options_problem as shapes_options_problem
from maskrcnn.data.transforms import build_transforms
from maskrcnn.errors import ConfigError

logger = logging.getLogger(__name__)


class CocoDataModule(pl.LightningDataModule):
    """Train / val dataloaders yielding ``(list[Tensor[3,H,W]], list[target dict])``.

    DDP: samplers are built here from ``self.trainer``'s world size and rank, so create the Trainer
    with ``use_distributed_sampler=False``. Training uses a shuffling ``DistributedSampler`` inside
    ``GroupedBatchSampler`` (equal step count per rank); validation uses ``InferenceSampler`` (each
    image exactly once, in order, no padding). With ``use_distributed_sampler=True`` validation is
    still correct, but Lightning would swap the training sampler for a NON-shuffling one (it cannot
    see that a sampler inside a batch sampler shuffles), hence the warning in ``train_dataloader``.

    Args:
        train / val: ``{"image_dir": ..., "annotation_file": ...}``; with ``generate_shapes`` they
            may be omitted (the generated split paths are used).
        batch_size: images per device.
        num_classes: foreground categories the model is built for; checked against the
            annotation files in ``setup`` (None: not checked).
        augmentation: a name from ``maskrcnn.data.transforms.AUGMENTATIONS`` or a dict
            ``{"name": ..., **build_transforms kwargs}`` (the ``augmentation`` config group). Train
            only; val is never resized here — the model resizes in eval mode.
        min_size / max_size: resize rule of the training pipeline (a dict's keys win).
        root: informational (the ``data=folder`` config derives the split paths from it).
        aspect_ratio_grouping: batch landscape and portrait images separately: ``True``, ``False``
            (random pairs, like a shuffling DataLoader) or ``"auto"``: group only when every
            orientation fills at least ``sampler.MIN_BATCHES_PER_GROUP`` batches
            (``sampler.grouping_is_worthwhile``); a rare orientation is otherwise batched only
            with itself, always the same few images together (docs/training_parity.md).
        keep_empty: keep training images without instances (validation always keeps them so
            COCO evaluation sees the full json).
        skipped_log_dir: folder for ``skipped_{train,val}.jsonl`` (skipped annotations) and
            ``skipped_images_{train,val}.jsonl`` (skipped unreadable image files).
        check_images: run in ``setup``, before training, on both splits: ``"header"`` opens every
            file and compares its size with the json (fast), ``"full"`` also decodes every image
            (catches truncated files; slow on big datasets), ``"none"`` checks nothing.
        bad_images: ``"skip"``: unreadable images found by the check are dropped (a warning gives
            the count; each is listed in ``skipped_images_{split}.jsonl``), and files that only fail
            when decoded during training are dropped from their batch and listed too; ``"raise"``:
            the check raises a DatasetError naming the first culprits and the count, and a file
            failing later raises where it is loaded. Under DDP prefer ``check_images=full`` with
            ``skip``: then nothing is left to fail mid-epoch, so no rank meets an empty batch.
        generate_shapes: kwargs of ``maskrcnn.data.shapes.generate_shapes`` (``out_dir``,
            ``num_train``, ``num_val``, ``image_size``, ``seed``); generated in ``prepare_data``.
        seed: shuffling seed of the training sampler and data seed of every training image's
            augmentation seed (``sampler.sample_seed``); the data config passes the run's ``seed``,
            so runs with different seeds see the images in different orders and augmentations.
        sampler: ``"random"`` (every training image once per epoch) or ``"repeat_factor"``: images
            with rare categories several times per epoch (``repeat_factor_sampler``).
        repeat_threshold: ``t`` of repeat-factor sampling: categories found in fewer than this
            fraction of the training images are repeated.
        copy_paste: kwargs of ``maskrcnn.data.copy_paste.CopyPaste`` (the ``copy_paste`` config
            group); None or ``prob: 0``: off. Training only.
    """

    def __init__(
        self,
        train: dict | None = None,
        val: dict | None = None,
        num_classes: int | None = None,
        batch_size: int = 2,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        augmentation: str | dict = "default",
        min_size: int = 800,
        max_size: int = 1333,
        aspect_ratio_grouping: bool | str = "auto",
        keep_empty: bool = True,
        skipped_log_dir: str | os.PathLike | None = None,
        generate_shapes: dict | None = None,
        drop_last: bool = False,
        seed: int = 0,
        root: str | None = None,
        check_images: str = "header",
        bad_images: str = "skip",
        sampler: str = "random",
        repeat_threshold: float = 0.001,
        copy_paste: dict | None = None,
    ) -> None:
        super().__init__()
        validate_options(bad_images, check_images)
        if sampler not in ("random", "repeat_factor"):
            raise ConfigError(f"data.sampler must be random or repeat_factor, got {sampler!r}")
        if not 0 < repeat_threshold <= 1:
            raise ConfigError(f"data.repeat_threshold must be in (0, 1], got {repeat_threshold!r}")
        self.sampler, self.repeat_threshold = sampler, repeat_threshold
        self._factors: np.ndarray | None = None  # repeat factor of every training image, once known
        self.copy_paste = CopyPaste.from_config(copy_paste)
        if aspect_ratio_grouping not in (True, False, "auto"):
            raise ConfigError(f"data.aspect_ratio_grouping must be true, false or auto, got {aspect_ratio_grouping!r}")
        self.check_images, self.bad_images = check_images, bad_images
        self.generate_shapes_kwargs = dict(generate_shapes) if generate_shapes else None
        if self.generate_shapes_kwargs is not None:
            kw = self.generate_shapes_kwargs
            problem = shapes_options_problem(kw.get("num_train", 300), kw.get("num_val", 50), kw.get("image_size", 128))
            if problem is not None:
                raise ConfigError(f"data.generate_shapes.{problem}")
            paths = self._shapes_paths()
            train, val = train or paths["train"], val or paths["val"]
        if not train or not val:
            raise ConfigError("data.train and data.val must be set: {image_dir: ..., annotation_file: ...} each")
        self.train_spec, self.val_spec = dict(train), dict(val)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.expected_num_classes = num_classes
        self.augmentation, self.augmentation_kwargs = augmentation_options(augmentation, min_size, max_size)
        self.aspect_ratio_grouping, self.keep_empty = aspect_ratio_grouping, keep_empty
        self.skipped_log_dir, self.drop_last, self.seed = skipped_log_dir, drop_last, seed
        self.train_dataset: CocoInstanceDataset | None = None
        self.val_dataset: CocoInstanceDataset | None = None
        # (where they come from, category id -> name) the splits must match; evaluation sets it from
        # the checkpoint, whose class names label the predictions.
        self.expected_categories: tuple[str, dict[int, str]] | None = None
        self._train_position = TrainPosition()  # mid-epoch resume (maskrcnn.data.resumable_loader)

    def _shapes_paths(self) -> dict[str, dict[str, str]]:
        assert self.generate_shapes_kwargs is not None  # only called with generate_shapes
        root = Path(self.generate_shapes_kwargs["out_dir"])
        return {
            s: {"image_dir": str(root / s), "annotation_file": str(root / s / "annotations.json")}
            for s in ("train", "val")
        }

    def prepare_data(self) -> None:
        if self.generate_shapes_kwargs is not None:
            generate_shapes(**self.generate_shapes_kwargs)  # idempotent: no-op when already there

    def _log_path(self, name: str) -> str | None:
        return None if self.skipped_log_dir is None else str(Path(self.skipped_log_dir) / f"{name}.jsonl")

    def _dataset(self, split: str, spec: dict, **kwargs: Any) -> CocoInstanceDataset:
        # Every DDP rank finds the same skipped annotations; one writer avoids interleaved files.
        first_rank = self._world()[1] == 0
        return CocoInstanceDataset(
            skipped_log=self._log_path(f"skipped_{split}") if first_rank else None,
            bad_images=self.bad_images,
            skipped_images_log=self._log_path(f"skipped_images_{split}"),
            **kwargs,
            **spec,
        )

    def setup(self, stage: str | None = None) -> None:
        new = []
        if self.train_dataset is None and stage in (None, "fit"):
            transforms = build_transforms(self.augmentation, True, **self.augmentation_kwargs)
            self.train_dataset = self._dataset(
                "train",
                self.train_spec,
                transforms=transforms,
                keep_empty=self.keep_empty,
                decode_min_size=self._decode_min_size(),
                seed=self.seed,
                copy_paste=self.copy_paste,
            )
            new.append(("train", self.train_dataset))
        if self.val_dataset is None:
            self.val_dataset = self._dataset("val", self.val_spec, keep_empty=True, for_evaluation=True)
            new.append(("val", self.val_dataset))
        self._check_num_classes()  # cheap json-level checks first, then the image files
        training = [dataset for split, dataset in new if split == "train"]
        for dataset in training:
            check_training_instances(dataset)
            check_resize_keeps_instances(dataset, self.augmentation, self.augmentation_kwargs)
        for split, dataset in new:  # validation images keep their size in the data pipeline
            scale = (
                pipeline_scale(self.augmentation, self.augmentation_kwargs)
                if split == "train"
                else pipeline_scale("none", {})
            )
            check_mask_memory(dataset, split, scale)
        for split, dataset in new:
            check_image_files(dataset, split, self.check_images, self.bad_images, write_log=self._world()[1] == 0)
        for dataset in training:  # unreadable images may have held every instance
            check_training_instances(dataset)
        for split, dataset in new:
            if split == "val":
                warn_if_nothing_to_evaluate(dataset)

    def _decode_min_size(self) -> tuple[int, int] | None:
        """Largest (short, long) output of the training resize, for reduced-scale JPEG decoding."""
        kw = self.augmentation_kwargs
        if self.augmentation in ("default", "photometric"):
            return int(kw["min_size"]), int(kw["max_size"])
        if self.augmentation == "multiscale":
            return int(max(kw.get("multiscale_sizes") or [kw["min_size"]])), int(kw["max_size"])
        return None  # "none" keeps the full size; "lsj" may upscale (scale up to 2x)

    def teardown(self, stage: str) -> None:
        """Summarise the images skipped over the whole run (including those found while loading)."""
        for split, dataset in (("train", self.train_dataset), ("val", self.val_dataset)):
            if dataset is not None and self.bad_images == "skip" and (n := dataset.image_log.count()):
                where = f"; listed in {dataset.image_log.path}" if dataset.image_log.path is not None else ""
                logger.warning("%s split: %d unreadable image(s) skipped in total%s", split, n, where)

    def _check_num_classes(self) -> None:
        """Reject a model/dataset class-count or category mismatch before any training step."""
        check_class_counts(self.train_dataset, self.val_dataset, self.expected_num_classes, self.expected_categories)

    # ------------------------------------------------------------------ dataset metadata
    def _any_dataset(self) -> CocoInstanceDataset:
        if self.val_dataset is None and self.train_dataset is None:
            self.setup("validate")
        return self.train_dataset or self.val_dataset  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of FOREGROUND classes K (the model adds background; ``build_mask_rcnn`` convention)."""
        return self._any_dataset().num_categories

    @property
    def class_names(self) -> list[str]:
        """Indexed by label, ``class_names[0] == "__background__"``."""
        return self._any_dataset().class_names

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return self._any_dataset().label_to_category_id

    @property
    def val_annotation_file(self) -> str:
        return str(self.val_spec["annotation_file"])

    # ------------------------------------------------------------------ loaders
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.persistent_workers,
            "collate_fn": collate,
            "worker_init_fn": seed_worker if self.num_workers > 0 else None,
        }

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_dataset is not None  # built by setup("fit")
        world, rank = self._world()
        connector = getattr(self.trainer, "_accelerator_connector", None)
        if world > 1 and getattr(connector, "use_distributed_sampler", False):
            warnings.warn(
                "CocoDataModule builds its own distributed samplers; create the Trainer with "
                "use_distributed_sampler=False, otherwise training batches are not shuffled",
                stacklevel=2,
            )
        batch_sampler = training_batch_sampler(
            self.train_dataset,
            self.batch_size,
            self.seed,
            world,
            rank,
            self.aspect_ratio_grouping,
            self._repeat_factors() if self.sampler == "repeat_factor" else None,
            self.drop_last,
        )
        loader = ResumableDataLoader(self.train_dataset, batch_sampler=batch_sampler, **self._loader_kwargs())
        return self._train_position.attach(loader)  # resumed mid-epoch: continues with the next batch

    def _repeat_factors(self) -> np.ndarray:
        """``ndarray[N] float64``: the repeat factor of every training image (``data.sampler=repeat_factor``)."""
        assert self.train_dataset is not None  # built by setup("fit"), images already checked
        if self._factors is None:
            self._factors = training_repeat_factors(self.train_dataset.image_labels(), self.repeat_threshold)
        return self._factors

    def train_epoch_images(self) -> tuple[int, int]:
        """(training images per epoch over all ranks, training images): they differ with repeat-factor sampling."""
        self.setup("fit")
        assert self.train_dataset is not None  # built by setup("fit")
        images = len(self.train_dataset)
        return (epoch_length(self._repeat_factors()) if self.sampler == "repeat_factor" else images), images

    def state_dict(self) -> dict[str, Any]:
        return self._train_position.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_position.load_state_dict(state_dict)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        assert self.val_dataset is not None  # built by setup
        world, rank = self._world()
        sampler = InferenceSampler(self.val_dataset, num_replicas=world, rank=rank)
        return DataLoader(self.val_dataset, batch_size=self.batch_size, sampler=sampler, **self._loader_kwargs())
