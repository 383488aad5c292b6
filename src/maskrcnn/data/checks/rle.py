"""Checks of RLE segmentations (``{"size": [h, w], "counts": ...}``) that never decode a mask.

pycocotools does not check RLE input: a compressed ``counts`` string that does not describe exactly
``h * w`` pixels makes ``decode`` raise ("Invalid RLE mask representation"), return uninitialised
memory, or corrupt the heap (seen: "free(): invalid size", the process aborts). So every string is
decoded here to its run lengths, all strings of a file at once with numpy, and checked.
"""

from __future__ import annotations

import numpy as np

from maskrcnn.data.checks.segmentation import Problem, json_type, short_repr

# pycocotools shifts each 5-bit group in a 32-bit int, so a 7th character overflows: its decoder reads
# numbers of at most 6 characters (30 bits, |run| < 2**29) correctly.
MAX_NUMBER_CHARS = 6
_ALPHABET = bytes(range(48, 112))  # '0'..'o': 6 bits per character
_CHUNK = 1 << 20  # characters decoded together


def rle_size_problem(rle: dict, width: int, height: int) -> Problem | None:
    if "size" not in rle or "counts" not in rle:
        return Problem(f"RLE must have 'size' and 'counts' (keys: {short_repr(sorted(map(str, rle)), 60)})", True)
    size = rle["size"]
    if (
        type(size) is list
        and len(size) == 2
        and type(size[0]) is int
        and type(size[1]) is int
        and size == [height, width]
    ):
        return None  # the common case, decided without a generator
    if type(size) is not list or len(size) != 2 or any(type(v) is not int or v <= 0 for v in size):
        return Problem(f"RLE size {short_repr(size)} must be [height, width] (two positive integers)", True)
    if size != [height, width]:
        return Problem(f"RLE size {size!r} does not match image size [{height}, {width}]", True)
    return None


class RleBatch:
    """RLE segmentations of many annotations: sizes and uncompressed counts are checked in ``add``,
    compressed strings all together in ``run``."""

    def __init__(self) -> None:
        self.slots: list[int] = []  # annotations with a compressed string, checked by run()
        self.strings: list[str] = []
        self.totals: list[int] = []
        self.valid: list[int] = []  # annotations whose RLE passed (after run())

    def add(self, slot: int, rle: dict, width: int, height: int) -> Problem | None:
        problem = rle_size_problem(rle, width, height)
        if problem is not None:
            return problem
        counts = rle["counts"]
        if type(counts) is str:
            self.slots.append(slot)
            self.strings.append(counts)
            self.totals.append(width * height)
            return None
        if type(counts) is not list:
            return Problem(f"RLE counts is {json_type(counts)} (expected a list of integers or a string)", True)
        problem = uncompressed_rle_problem(counts, height, width)
        if problem is None:
            self.valid.append(slot)
        return problem

    def run(self) -> dict[int, Problem]:
        problems = {}
        for slot, problem in zip(self.slots, compressed_rle_problems(self.strings, self.totals), strict=True):
            if problem is None:
                self.valid.append(slot)
            else:
                problems[slot] = problem
        return problems


def uncompressed_rle_problem(counts: list, height: int, width: int) -> Problem | None:
    """Problem of an uncompressed RLE ``counts`` list (runs of 0s and 1s, column-major)."""
    total = height * width
    try:
        array = np.array(counts)
    except (ValueError, TypeError, OverflowError):
        array = None
    if not counts or array is None or array.ndim != 1 or array.dtype.kind not in "biu":
        return Problem(
            f"uncompressed RLE counts must be a list of non-negative integers (got {short_repr(counts, 60)})", True
        )
    if array.min() < 0:
        return Problem("uncompressed RLE counts must be non-negative", True)
    if array.max() > total or int(array.sum()) != total:
        return Problem(f"uncompressed RLE counts sum to {int(array.sum())}, not height*width = {total}", True)
    if not array[1::2].any():
        return Problem("empty mask (RLE has no foreground pixels)", False)
    return None


def compressed_rle_problems(strings: list[str], totals: list[int]) -> list[Problem | None]:
    """Problem (or None) of each compressed RLE ``counts`` string; ``totals[i]`` is height * width
    of string i's ``size``.

    A string passes when every character is in '0'..'o', it does not end inside a number, no
    number is longer than 7 characters, every run is non-negative and the runs sum to exactly
    ``totals[i]`` (then pycocotools decodes it safely).
    """
    results: list[Problem | None] = [None] * len(strings)
    good, parts = [], []
    for i, s in enumerate(strings):
        raw = s.encode("utf-8", "surrogatepass")
        bad = raw.translate(None, _ALPHABET)
        if not raw:
            results[i] = Problem("compressed RLE counts string is empty", True)
        elif bad:
            pos = next(p for p, ch in enumerate(s) if not "0" <= ch <= "o")
            results[i] = Problem(
                f"compressed RLE counts string cannot be decoded: character {s[pos]!r} at "
                f"position {pos} is not in the RLE alphabet ('0'..'o')",
                True,
            )
        elif (raw[-1] - 48) & 0x20:
            results[i] = Problem("compressed RLE counts string cannot be decoded: it ends inside a number", True)
        else:
            good.append(i)
            parts.append(raw)
    if not good:
        return results
    lengths = np.fromiter(map(len, parts), np.int64, len(parts))
    # Chunks of about a million characters keep every array small enough for the allocator to reuse
    # (one pass over 36 M characters spent most of its time page-faulting fresh memory).
    pieces, begin, size = [], 0, 0
    for end, n in enumerate(lengths.tolist(), start=1):
        size += n
        if size >= _CHUNK or end == len(parts):
            chars = np.frombuffer(b"".join(parts[begin:end]), np.uint8) - 48
            pieces.append(_decode_runs(chars, lengths[begin:end]))
            begin, size = end, 0
    longest, total, foreground = (np.concatenate(column) for column in zip(*pieces, strict=True))
    for j, i in enumerate(good):
        if longest[j] > MAX_NUMBER_CHARS:
            results[i] = Problem(
                "compressed RLE counts string cannot be decoded: a number is longer than "
                f"{MAX_NUMBER_CHARS} characters (pycocotools cannot decode it)",
                True,
            )
        elif total[j] != totals[i]:
            results[i] = Problem(
                f"compressed RLE counts string cannot be decoded: its runs sum to {int(total[j])} "
                f"pixels, not height*width = {totals[i]}",
                True,
            )
        elif foreground[j] == 0:
            results[i] = Problem("empty mask (RLE has no foreground pixels)", False)
    return results


def _decode_runs(chars: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run lengths of concatenated RLE strings exactly as pycocotools' ``rleFrString`` computes them
    (unsigned 32-bit), summed per string without decoding any mask.

    Args:
        chars: ``uint8[C]`` characters minus 48, all in 0..63; every string ends a number.
        lengths: ``int64[S]`` characters per string.
    Returns:
        per string: longest number in characters ``int64[S]``, sum of the runs and sum of the odd
        (foreground) runs, ``uint64[S]``. A "negative" run wraps to over 2**31, so its sum cannot
        equal a valid height*width.
    """
    # A number is 5 bits per character, least significant first; 0x20 marks "more characters
    # follow" and 0x10 in a number's last character is its sign. From the 4th number on, a run is
    # stored as the difference to the run two before: runs[j] = x[j] + x[j-2] + ... down to x[1]
    # (odd j) or x[2] (even j), a cumulative sum along every other number.
    closes = (chars & 0x20) == 0
    ends = np.flatnonzero(closes)  # last character of each number
    n = len(ends)
    values = (chars[closes] & 0x1F).astype(np.uint32)  # right for one-character numbers (most of them)
    num_len = np.ones(n, np.uint8)
    more = np.flatnonzero(~closes)
    if len(more):
        owner = np.searchsorted(ends, more)  # non-decreasing
        multi, count = np.unique(owner, return_counts=True)
        num_len[multi] = np.minimum(count + 1, 255)
        start, value = ends[multi] - count, np.zeros(len(multi), np.int64)
        for k in range(min(int(count.max()) + 1, MAX_NUMBER_CHARS)):  # longer ones are rejected
            sel = np.flatnonzero(count >= k)
            value[sel] += (chars[start[sel] + k].astype(np.int64) & 0x1F) << (5 * k)
        values[multi] = value.astype(np.uint32)
    negative = np.searchsorted(ends, np.flatnonzero((chars & 0x30) == 0x10))  # closing characters with the sign bit
    values[negative] -= np.uint32(1) << (5 * np.minimum(num_len[negative], MAX_NUMBER_CHARS)).astype(np.uint32)
    last = np.searchsorted(ends, np.cumsum(lengths) - 1)  # last number of each string
    first = np.concatenate([[0], last[:-1] + 1])
    cumulative = np.empty(n, np.uint32)  # along every other number, across strings (wraps like pycocotools)
    for q in (0, 1):
        np.cumsum(values[q::2], dtype=np.uint32, out=cumulative[q::2])
    base_even = cumulative[first]  # chain of even j starts after j = 0
    base_odd = np.where(first > 0, cumulative[np.maximum(first - 1, 0)], 0).astype(np.uint32)
    runs = np.empty(n, np.uint32)
    totals = []
    for q in (0, 1):  # numbers at global positions of parity q; j is even there when first has parity q
        in_string = (last - q) // 2 - (first - 1 - q) // 2
        base = np.where((first & 1) == q, base_even, base_odd).astype(np.uint32)
        runs[q::2] = cumulative[q::2] - np.repeat(base, in_string)
        totals.append((first - q + 1) // 2)
    runs[first] = values[first]
    sums = []
    for q in (0, 1):
        prefix = np.concatenate([[0], np.cumsum(runs[q::2], dtype=np.uint64)])
        start = totals[q]
        stop = (last - q) // 2 + 1
        sums.append(prefix[stop] - prefix[np.minimum(start, stop)])
    total = sums[0] + sums[1]
    foreground = np.where((first & 1) == 0, sums[1], sums[0])  # odd j sit at parity first + 1
    longest = np.ones(len(lengths), np.int64)
    if len(more):
        np.maximum.at(longest, np.searchsorted(last, multi), num_len[multi].astype(np.int64))
    return longest, total, foreground
