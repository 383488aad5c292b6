"""Hydra composition like the command line, with tiny, fast settings (``TINY``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

# Tiny model + data settings so that a real training run takes seconds on 2 CPU cores.
TINY = [
    "model=resnet18_fpn_slim",
    "model.backbone.out_channels=32",
    "model.transform.min_size=64",
    "model.transform.max_size=64",
    "augmentation.min_size=64",
    "augmentation.max_size=64",
    "model.rpn.pre_nms_top_n_train=200",
    "model.rpn.post_nms_top_n_train=100",
    "model.rpn.pre_nms_top_n_test=100",
    "model.rpn.post_nms_top_n_test=50",
    "model.roi_heads.batch_size_per_image=32",
    "model.roi_heads.detections_per_img=20",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.generate_shapes.num_train=12",
    "data.generate_shapes.num_val=5",
    "data.generate_shapes.image_size=64",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "callbacks=none",
    "log_val_images=0",
    "scheduler.warmup_steps=10",
]

# The eval config has no optimizer / scheduler / callbacks groups.
TINY_EVAL = [o for o in TINY if not o.startswith(("callbacks", "scheduler", "log_val_images"))]


def compose(
    overrides: list[str] = (), config_name: str = "train", output_dir: Path | None = None, data_dir: Path | None = None
):
    """Compose a config like the command line does, with run paths pointed at temp dirs."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    paths = [f"paths.root_dir={ROOT}"]
    if output_dir is not None:
        paths.append(f"paths.output_dir={output_dir}")
    if data_dir is not None:
        paths.append(f"paths.data_dir={data_dir}")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return hydra_compose(config_name=config_name, overrides=[*paths, *overrides])
