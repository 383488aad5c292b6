"""Every config group option and experiment composes; the objects they describe instantiate."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers.config import CONF, ROOT, compose
from maskrcnn.errors import ConfigError
from maskrcnn.losses.criterion import TERMS
from maskrcnn.training.builders import build_datamodule, build_loggers, effective_batch_size, scaled_lr


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


GROUPS = [
    "data",
    "augmentation",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "debug",
]


def test_every_group_has_the_promised_options():
    assert {"resnet18_fpn", "resnet50_fpn", "resnet101_fpn", "resnext101_fpn"} <= set(options("model"))
    assert {"ce", "focal"} <= set(options("loss"))
    assert {"sgd", "adamw"} <= set(options("optimizer"))
    assert {"multistep", "cosine"} <= set(options("scheduler"))
    assert {"cpu", "gpu", "ddp", "ddp_sim", "multinode"} <= set(options("trainer"))
    assert {"wandb", "csv", "tensorboard", "none"} <= set(options("logger"))
    assert {"none", "default", "multiscale", "lsj", "photometric"} <= set(options("augmentation"))
    assert {"shapes", "coco", "folder", "nuts"} <= set(options("data"))
    assert {"coco_r50_1x", "coco_r101_3x", "nuts_finetune"} <= set(options("experiment"))
    assert {"fast_dev_run", "overfit", "limit"} <= set(options("debug"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes(group, option, tmp_path):
    extra = ["data.root=/some/where", "data.num_classes=4"] if (group, option) == ("data", "folder") else []
    cfg = compose([f"{group}={option}", *extra], output_dir=tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.model._target_.endswith("build_mask_rcnn")
    assert cfg.model.num_classes == cfg.data.num_classes


def test_eval_config_composes(tmp_path):
    cfg = compose(["ckpt_path=x.ckpt"], config_name="eval", output_dir=tmp_path)
    OmegaConf.resolve(cfg)
    # eval lists optimizer/scheduler only so that data options choosing them compose (data=shapes
    # picks AdamW + cosine); they are the train defaults and nothing in evaluate() reads them.
    assert cfg.task_name == "eval" and cfg.data.num_classes == cfg.model.num_classes


def test_unknown_group_option_names_the_group_and_choices(tmp_path):
    with pytest.raises(MissingConfigException) as err:
        compose(["model=resnet7_fpn"], output_dir=tmp_path)
    assert "model" in str(err.value) and "resnet50_fpn" in str(err.value)


@pytest.mark.parametrize("loss", options("loss"))
def test_loss_configs_instantiate(loss, tmp_path):
    cfg = compose([f"loss={loss}"], output_dir=tmp_path)
    criterion = instantiate(cfg.loss.criterion)
    assert isinstance(criterion, torch.nn.Module)
    assert set(cfg.loss.weights) == set(TERMS)


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_instantiate(optimizer, scheduler, tmp_path):
    cfg = compose(
        [f"optimizer={optimizer}", f"scheduler={scheduler}", "scheduler.warmup_steps=10"], output_dir=tmp_path
    )
    param = torch.nn.Parameter(torch.zeros(3))
    opt = instantiate(cfg.optimizer.fn)([param], lr=0.1)
    sched = instantiate(cfg.scheduler)(opt, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1 * 0.001)  # warm-up starts at warmup_factor * lr
    assert max(lrs) == pytest.approx(0.1)
    assert lrs[-1] < 0.1 * 0.5  # decayed by the end


def test_multistep_milestones_are_fractions_of_training(tmp_path):
    cfg = compose(["scheduler=multistep", "scheduler.warmup_steps=0"], output_dir=tmp_path)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = instantiate(cfg.scheduler)(opt, total_steps=900)
    lrs = []
    for _ in range(900):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[599] == pytest.approx(1.0) and lrs[601] == pytest.approx(0.1)
    assert lrs[799] == pytest.approx(0.1) and lrs[801] == pytest.approx(0.01)


@pytest.mark.parametrize("logger", options("logger"))
def test_loggers_instantiate_offline(logger, tmp_path):
    cfg = compose([f"logger={logger}"], output_dir=tmp_path)
    loggers = build_loggers(cfg)  # entries without _target_ (logger.wandb_dashboard) are settings
    assert len(loggers) == (0 if logger == "none" else 1)


def test_callbacks_instantiate(tmp_path):
    cfg = compose([], output_dir=tmp_path)
    callbacks = {name: instantiate(c) for name, c in cfg.callbacks.items()}
    names = {type(c).__name__ for c in callbacks.values()}
    assert {"AtomicModelCheckpoint", "LastCheckpoint", "RichProgressBar", "ProgressLog"} <= names
    assert callbacks["model_checkpoint"].monitor == "val/segm_AP" and callbacks["last_checkpoint"].monitor is None
    assert "LearningRateMonitor" not in names  # train/lr is logged by the module


def test_linear_scaling_rule(tmp_path):
    cfg = compose(
        [
            "trainer=ddp",
            "trainer.devices=8",
            "trainer.num_nodes=2",
            "data.batch_size=2",
            "trainer.accumulate_grad_batches=1",
            "optimizer.lr_per_16_images=0.02",
        ],
        output_dir=tmp_path,
    )
    assert effective_batch_size(cfg) == 32
    assert scaled_lr(cfg) == pytest.approx(0.04)


def test_missing_num_classes_is_named(tmp_path):
    cfg = compose(["data=folder", "data.root=/x"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="data.num_classes"):
        build_datamodule(cfg)


@pytest.mark.parametrize("model", ["resnet18_fpn", "resnet50_fpn"])
def test_model_configs_build_and_load_state(model, tmp_path):
    cfg = compose([f"model={model}", "model.backbone.pretrained=false"], output_dir=tmp_path)
    net = instantiate(cfg.model, _convert_="all")
    assert sum(p.numel() for p in net.parameters()) > 1e6


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet101_fpn", "resnext101_fpn"])
def test_big_model_configs_build(model, tmp_path):
    cfg = compose([f"model={model}", "model.backbone.pretrained=false"], output_dir=tmp_path)
    net = instantiate(cfg.model, _convert_="all")
    assert sum(p.numel() for p in net.parameters()) > 40e6


def test_cli_resnet101_focal_runs(tiny, shapes_dir, tmp_path):
    """The README's headline command composes and runs end to end (one batch, from scratch)."""
    cmd = [
        sys.executable,
        "src/train.py",
        "model=resnet101_fpn",
        "loss=focal",
        "model.backbone.pretrained=false",
        "debug=fast_dev_run",
        *[o for o in tiny if not o.startswith(("model=", "experiment="))],
        f"paths.data_dir={shapes_dir}",
        f"hydra.run.dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "= 2 images/step" in proc.stdout + proc.stderr


def test_no_arguments_is_the_cpu_demo_and_no_experiment_is_applied(tmp_path):
    demo = compose([], output_dir=tmp_path)
    assert demo.experiment is None if "experiment" in demo else True
    assert demo.model.backbone.name == "resnet18" and demo.model.backbone.out_channels == 64
    assert demo.model.transform.min_size == 128 and demo.augmentation.min_size == 128
    assert demo.trainer.max_epochs == 10 and demo.optimizer.fn._target_ == "torch.optim.AdamW"


def _model_yaml(name: str) -> dict:
    """The values a model option states itself, its ``defaults`` chain resolved (bases first)."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
    merged = OmegaConf.create()
    for base in raw.pop("defaults", []):
        if base != "_self_":
            merged = OmegaConf.merge(merged, _model_yaml(base))
    return OmegaConf.to_container(OmegaConf.merge(merged, raw))


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("data", options("data"))
@pytest.mark.parametrize("model", options("model"))
def test_the_chosen_model_keeps_its_own_values_with_every_data_option(data, model, tmp_path):
    """No hidden recipe: whatever the data option, `model=X` composes exactly X's own yaml values
    (only num_classes comes from the data), and training images follow the model's sizes."""
    extra = ["data.root=/some/where", "data.num_classes=4"] if data == "folder" else []
    cfg = compose([f"data={data}", f"model={model}", *extra], output_dir=tmp_path)
    composed = _leaves(OmegaConf.to_container(cfg.model, resolve=True))
    for key, value in _leaves(_model_yaml(model)).items():
        if key != "num_classes":
            assert composed[key] == value, f"data={data} model={model}: model.{key}"
    assert cfg.augmentation.min_size == cfg.model.transform.min_size


@pytest.mark.parametrize("data", ["folder", "coco", "nuts"])
def test_real_data_options_get_the_standard_recipe(data, tmp_path):
    extra = ["data.root=/some/where", "data.num_classes=1"] if data == "folder" else []
    cfg = compose([f"data={data}", *extra], output_dir=tmp_path)
    assert cfg.model.backbone.name == "resnet50" and cfg.model.backbone.out_channels == 256
    assert (cfg.model.transform.min_size, cfg.model.transform.max_size) == (800, 1333)
    assert (cfg.augmentation.min_size, cfg.augmentation.max_size) == (800, 1333)
    assert cfg.model.rpn.anchor_sizes[0] == [32] and cfg.model.roi_heads.representation_size == 1024
    assert cfg.optimizer.lr_per_16_images == 0.02


def test_small_data_recipe_settings_and_user_choices_win(tmp_path):
    """experiment=small_data on a user's folder: the measured recipe (AdamW 0.004 per 16 images +
    warm-up/cosine, fitted anchors, 300 detections, 2000 steps); a group the user picks still wins."""
    folder = ["data=folder", "data.root=/some/where", "data.num_classes=2"]
    cfg = compose(["experiment=small_data", *folder], output_dir=tmp_path)
    assert cfg.optimizer.fn._target_ == "torch.optim.AdamW" and cfg.optimizer.lr_per_16_images == 0.004
    assert cfg.scheduler._target_.endswith("warmup_cosine") and cfg.scheduler.warmup_steps == 100
    assert cfg.model.rpn.anchor_sizes == "auto" and cfg.model.roi_heads.detections_per_img == 300
    assert cfg.trainer.max_steps == 2000 and cfg.trainer.val_check_interval == 200
    assert cfg.model.backbone.name == "resnet50"  # the model stays the user's (default) choice
    mine = compose(["experiment=small_data", *folder, "optimizer=sgd", "model=resnet18_fpn"], output_dir=tmp_path)
    assert mine.optimizer.fn._target_ == "torch.optim.SGD" and mine.model.backbone.name == "resnet18"
