"""RLE masks, crowd regions and non-contiguous category ids; compressed RLE checks against pycocotools."""

import re

import numpy as np
from pycocotools import mask as mask_utils

from helpers.coco_files import SQUARE, ann, make


# ---------------------------------------------------------------- RLE, iscrowd, category ids
def test_rle_iscrowd_and_noncontiguous_categories(tmp_path):
    h, w = 16, 20
    m_compressed = np.zeros((h, w), np.uint8)
    m_compressed[4:8, 10:18] = 1
    rle = mask_utils.encode(np.asfortranarray(m_compressed))
    compressed = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    m_crowd = np.zeros((h, w), np.uint8)
    m_crowd[10:14, 1:5] = 1
    flat = m_crowd.flatten(order="F")  # COCO RLE runs are column-major, starting with zeros
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))  # run boundaries
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    counts[-1] = h * w - sum(counts[:-1])
    uncompressed = {"size": [h, w], "counts": counts}
    cats = [{"id": 9, "name": "zebra"}, {"id": 3, "name": "ant"}]
    anns = [
        ann(1, SQUARE, category_id=9),
        ann(2, compressed, category_id=3),
        {**ann(3, uncompressed, category_id=3), "iscrowd": 1},
        ann(4, {"size": [h, w], "counts": [h * w]}, category_id=3),
    ]  # empty RLE: skipped
    ds = make(tmp_path, annotations=anns, categories=cats)
    assert ds.class_names == ["__background__", "ant", "zebra"]
    assert ds.category_id_to_label == {3: 1, 9: 2} and ds.label_to_category_id == {1: 3, 2: 9}
    assert [s["annotation_id"] for s in ds.skipped] == [4]
    _, target = ds[0]
    assert target["labels"].tolist() == [2, 1]  # crowd never becomes a training instance
    assert target["boxes"].tolist() == [[2, 2, 12, 10], [10, 4, 18, 8]]
    assert np.array_equal(target["masks"][1].numpy(), m_compressed)
    assert target["crowd_boxes"].tolist() == [[1, 10, 5, 14]]


def test_instance_cropped_away_is_dropped_consistently(tmp_path):
    cats = [{"id": 1, "name": "left"}, {"id": 2, "name": "right"}]
    anns = [
        ann(1, [[15, 2, 19, 2, 19, 6, 15, 6]], category_id=2),
        ann(2, SQUARE, category_id=1),
        {**ann(3, [[16, 10, 19, 10, 19, 14, 16, 14]], category_id=1), "iscrowd": 1},
    ]

    def keep_left_half(image, masks):  # stands in for a crop augmentation
        return image[:, :13].copy(), masks[:, :, :13].copy()

    _, target = make(tmp_path, annotations=anns, categories=cats, transforms=keep_left_half)[0]
    assert target["labels"].tolist() == [1] and target["boxes"].tolist() == [[2, 2, 12, 10]]
    assert target["masks"].shape == (1, 16, 13) and target["crowd_boxes"].shape == (0, 4)
    assert target["orig_size"] == (16, 20)


# ---------------------------------------------------------------- compressed RLE strings vs pycocotools
def _reference_runs(counts: str) -> list[int]:
    """pycocotools' rleFrString in Python, with its unsigned 32-bit runs."""
    runs, p = [], 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x % 2**32)
    return runs


def test_compressed_rle_check_agrees_with_pycocotools():
    """Valid strings pass with their exact area; of mutated strings exactly those whose runs sum
    to height*width pass, and pycocotools decodes every one that passes into a clean 0/1 mask."""
    from maskrcnn.data.checks.rle import MAX_NUMBER_CHARS, compressed_rle_problems

    rng = np.random.default_rng(0)
    strings, totals, masks = [], [], []
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        strings.append(mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii"))
        totals.append(h * w)
        masks.append(mask)
    for problem, mask in zip(compressed_rle_problems(strings, totals), masks, strict=True):
        assert (problem is None) == bool(mask.any())  # an empty mask is skipped as empty, not as broken
    mutated, mutated_totals, passed = [], [], 0
    for s, total in zip(strings, totals, strict=True):
        for _ in range(20):
            chars = list(s)
            pos = int(rng.integers(0, len(chars)))
            op = rng.integers(0, 3)
            if op == 0:
                chars[pos] = chr(int(rng.integers(48, 112)))
            elif op == 1 and len(chars) > 1:
                del chars[pos]
            else:
                chars.insert(pos, chr(int(rng.integers(48, 112))))
            mutated.append("".join(chars))
            mutated_totals.append(total)
    for s, total, problem in zip(
        mutated, mutated_totals, compressed_rle_problems(mutated, mutated_totals), strict=True
    ):
        closed = (ord(s[-1]) - 48) & 0x20 == 0
        longest = max(len(n) for n in re.findall(r"[\x50-\x6f]*[\x30-\x4f]", s)) if closed else 0
        expected = closed and longest <= MAX_NUMBER_CHARS and sum(_reference_runs(s)) == total
        assert (problem is None or not problem.malformed) == expected, s
        if expected:
            passed += 1
            h = next(h for h in range(1, total + 1) if total % h == 0)
            decoded = mask_utils.decode({"size": [h, total // h], "counts": s})
            assert set(np.unique(decoded).tolist()) <= {0, 1}
            assert int(decoded.sum()) == sum(_reference_runs(s)[1::2])
    assert passed > 20  # the mutations do produce valid strings too
