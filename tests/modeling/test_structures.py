"""The contracts of modeling/structures.py: docs/design.md agrees with them, and validate_targets
rejects every malformed target with an error naming the image."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from maskrcnn.modeling import structures
from maskrcnn.modeling.structures import validate_targets

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"
TYPED_DICTS = [v for v in vars(structures).values() if isinstance(v, type) and hasattr(v, "__required_keys__")]


def documented_fields(cls: type) -> dict[str, str]:
    """key -> the comment on the line declaring it (joined with comment-only continuation lines)."""
    fields: dict[str, str] = {}
    key = None
    for line in inspect.getsource(cls).splitlines():
        declared = re.match(r"\s+(\w+): [^#]+#\s*(.+)$", line)
        continued = re.match(r"\s+#\s*(.+)$", line)
        if declared:
            key = declared.group(1)
            fields[key] = declared.group(2)
        elif continued and key is not None:
            fields[key] += " " + continued.group(1)
        else:
            key = None
    return fields


def markdown_table(cls: type) -> str:
    """The table docs/design.md must contain under the heading naming ``cls``."""
    rows = ["| key | contents |", "|---|---|"]
    for key, text in documented_fields(cls).items():
        optional = " (optional)" if key in cls.__optional_keys__ else ""
        rows.append(f"| `{key}`{optional} | {text.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def test_structures_define_the_documented_dicts():
    names = {cls.__name__ for cls in TYPED_DICTS}
    assert {"Target", "Detection", "RPNLossInputs", "RoILossInputs", "MaskLossInputs", "LossInputs"} <= names


@pytest.mark.parametrize("cls", TYPED_DICTS, ids=lambda c: c.__name__)
def test_every_key_is_documented_in_code_and_in_design_md(cls):
    fields = documented_fields(cls)
    assert list(fields) == list(cls.__annotations__), f"{cls.__name__}: every key needs a '# shape, dtype' comment"
    text = DESIGN.read_text()
    assert f"### `{cls.__name__}`" in text, f"docs/design.md has no section '### `{cls.__name__}`'"
    table = markdown_table(cls)
    assert table in text, f"docs/design.md disagrees with structures.{cls.__name__}; its table must read:\n{table}"


def _target(num: int = 2, image_id: int = 7, size: tuple[int, int] = (32, 40)) -> dict:
    return {
        "boxes": torch.tensor([[1.0, 2.0, 10.0, 12.0], [5.0, 5.0, 30.0, 20.0]])[:num],
        "labels": torch.tensor([1, 3])[:num],
        "masks": torch.zeros(num, *size, dtype=torch.uint8),
        "image_id": image_id,
        "crowd_boxes": torch.zeros(0, 4),
    }


def _with(**changes) -> dict:
    return {**_target(), **changes}


IMAGES = [torch.rand(3, 32, 40), torch.rand(3, 32, 40)]
BAD_TARGETS = [  # (second target, exception, message after "target 1 (image_id=7)" or its key)
    ({k: v for k, v in _target().items() if k != "labels"}, KeyError, r"target 1 \(image_id=7\) has no 'labels' key"),
    ([1, 2], TypeError, "target 1 must be a dict, got list"),
    (
        _with(boxes=torch.zeros(2, 5)),
        ValueError,
        r"boxes of target 1 \(image_id=7\) must be a Tensor\[N, 4\], got \(2, 5\)",
    ),
    (
        _with(boxes=[[1, 2, 3, 4]] * 2),
        ValueError,
        r"boxes of target 1 \(image_id=7\) must be a Tensor\[N, 4\], got list",
    ),
    (
        _with(boxes=torch.tensor([[1, 2, 10, 12], [5, 5, 30, 20]])),
        TypeError,
        "boxes of .* must be float, got torch.int64",
    ),
    (_with(labels=torch.tensor([1.0, 3.0])), TypeError, r"labels of target 1 \(image_id=7\) must be int64"),
    (_with(labels=torch.tensor([[1, 3]])), ValueError, r"labels of .* must be a Tensor\[N\], got \(1, 2\)"),
    (_with(masks=torch.zeros(2, 32, 41, dtype=torch.uint8)), ValueError, r"\(H, W\) = \(32, 40\), got \(2, 32, 41\)"),
    (_with(labels=torch.tensor([1])), ValueError, r"\(image_id=7\) has 2 boxes, 1 labels and 2 masks"),
    (
        _with(boxes=torch.tensor([[1.0, 2.0, 10.0, 12.0], [5.0, 5.0, 5.0, 20.0]])),
        ValueError,
        r"\(image_id=7\) box 1 = \[5.0, 5.0, 5.0, 20.0\] has non-positive width or height",
    ),
    (_with(labels=torch.tensor([1, 0])), ValueError, r"\(image_id=7\) label 1 is 0; labels are class ids 1..K"),
    (_with(crowd_boxes=torch.zeros(4)), ValueError, r"crowd_boxes of target 1 \(image_id=7\) must be a Tensor\[N, 4\]"),
]


@pytest.mark.parametrize("bad,exc,message", BAD_TARGETS)
def test_validate_targets_names_the_image(bad, exc, message):
    with pytest.raises(exc, match="^[\"']?MaskRCNN: .*" + message):
        validate_targets(IMAGES, [_target(image_id=3), bad], where="MaskRCNN")


def test_validate_targets_accepts_the_contract():
    negative = {**_target(0), "orig_size": (64, 80)}  # an image without objects is valid
    no_optional = {k: v for k, v in _target().items() if k not in ("image_id", "crowd_boxes")}
    validate_targets(IMAGES, [negative, no_optional])
    with pytest.raises(ValueError, match="got 2 images but 1 targets"):
        validate_targets(IMAGES, [negative])
