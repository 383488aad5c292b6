"""The dataset-fit report as fixed-width text (``FitReport.format``): counts, object sizes at the
training scale against the anchors, and the warnings with the override line to paste."""

from __future__ import annotations

from maskrcnn.data.fit.report import PERCENTILES, FitReport, anchor_override, scale_override


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _format_counts(r: FitReport) -> list[str]:
    scale = r.splits["train"].image_scale
    if r.settings["min_size"] is None:
        lines = ["Training scale: native resolution (tiles or no resize; objects at their file size)"]
    else:
        lines = [
            f"Training scale: min_size {r.settings['min_size']}, max_size {r.settings['max_size']}"
            + (f" (train images x{scale['p50']:.2f} median, x{scale['min']:.2f}..x{scale['max']:.2f})" if scale else "")
        ]
    lines.append(f"{'split':<6}{'images':>8}{'empty':>7}{'instances':>11}{'crowd':>7}{'skipped':>9}  max/image")
    for name, s in r.splits.items():
        top = f" (image {s.max_instances_image_id})" if s.max_instances else ""
        lines.append(
            f"{name:<6}{s.images:>8}{s.images_without_instances:>7}{s.instances:>11}{s.crowd:>7}"
            f"{sum(s.invalid.values()):>9}  {s.max_instances}{top}"
        )
    for name, s in r.splits.items():  # silent in the usual case: every json bbox matches its mask
        if s.bbox_disagree:
            lines.append(
                f"{name:<6}boxes: all from the masks (as training); {s.bbox_disagree} json bbox(es) disagree "
                "with their mask (not used)"
            )
    counts = {c: [s.instances_per_class[c] for s in r.splits.values()] for c in r.classes}
    shown = list(counts)
    if len(shown) > 12:  # the rarest and the most common; to_dict() has them all
        shown = sorted(shown, key=lambda c: counts[c][0])
        shown = shown[:6] + ["..."] + shown[-6:]
    width = max([len(c) for c in shown] + [5])
    lines.append(f"{'class':<{width}}" + "".join(f"{n:>8}" for n in r.splits))
    lines += [f"{c:<{width}}" + "".join(f"{n:>8}" for n in counts.get(c, [])) for c in shown]
    return lines


def _format_sizes(r: FitReport) -> list[str]:
    sizes, fg = r.settings["anchor_sizes"], r.settings["rpn_fg_iou_thresh"]
    lines = ["Object size sqrt(w*h) at the training scale, px"]
    lines.append(f"{'split':<6}" + "".join(f"{k:>8}" for k in PERCENTILES))
    for name, s in r.splits.items():
        values = "".join(f"{v:>8.1f}" for v in s.sizes.values()) if s.sizes else "  (no instances)"
        lines.append(f"{name:<6}{values}")
    ratios = ",".join(f"{x:g}" for x in sorted({x for lvl in r.settings["aspect_ratios"] for x in lvl}))
    lines.append(
        f"Anchors {','.join('/'.join(f'{a:g}' for a in lvl) for lvl in sizes)} (ratios {ratios}); "
        f"shape-only best IoU, RPN fg >= {fg:g}"
    )
    below, above = f"<{min(map(min, sizes)) / 2:g}px", f">{2 * max(map(max, sizes)):g}px"
    levels = "/".join(f"P{i + 2}" for i in range(len(sizes)))
    lines.append(
        f"{'split':<6}{below:>9}{above:>9}{f'IoU<{fg:g}':>9}{'IoU<0.5':>9}{'med IoU':>9}  best level {levels} %"
    )
    for name, s in r.splits.items():
        med = f"{s.best_iou_median:.2f}" if s.best_iou_median is not None else "-"
        lines.append(
            f"{name:<6}{_pct(s.frac_below_half_smallest):>9}{_pct(s.frac_above_twice_largest):>9}"
            f"{_pct(s.frac_iou_below_fg):>9}{_pct(s.frac_iou_below_half):>9}{med:>9}  "
            + "/".join(f"{100 * x:.0f}" for x in s.level_share)
        )
    return lines


def _format_advice(r: FitReport) -> list[str]:
    lines, sug = ["Warnings:" if r.warnings else "Warnings: none"], r.suggestion
    for w in r.warnings:
        lines.append(f"  ! {w.message}")
        lines += [f"    {'fix:' if i == 0 else 'or: '} {o}" for i, o in enumerate(w.overrides)]
    lines.append("Suggestion (from the training split; fitness = mean best anchor IoU, < 0.5 counting 0):")
    if sug.anchor_sizes is not None and sug.keep_anchors and not sug.fits:
        lines.append(f"  anchors: {sug.verdict()}")
    elif sug.anchor_sizes is not None and sug.keep_anchors:
        assert sug.best_doubling is not None and sug.frac_iou_below_half is not None  # set with anchor_sizes
        best = anchor_override(sug.best_doubling).split("=")[1].strip("'")
        lines.append(
            f"  anchors: keep the configured ones (IoU<0.5 {_pct(sug.frac_iou_below_half)}, fitness "
            f"{sug.configured_fitness:.3f}; best doubling set {best} {sug.best_doubling_fitness:.3f})"
        )
    elif sug.anchor_sizes is not None:
        assert sug.frac_iou_below_half is not None  # set with anchor_sizes
        lines.append(
            f"  anchors: {anchor_override(sug.anchor_sizes)}  (IoU<0.5 -> {_pct(sug.frac_iou_below_half)}, "
            f"fitness {sug.best_doubling_fitness:.3f} vs {sug.configured_fitness:.3f} configured)"
        )
    if sug.min_size is not None and sug.max_size is not None:  # set together
        scale = scale_override(sug.min_size, sug.max_size, r.settings["max_size"])
        lines.append(f"  {'scale' if sug.keep_anchors else 'or scale'}: {scale}  (p5 -> {sug.p5_at_min_size:.1f} px)")
    if sug.note:
        lines.append(f"  {sug.note}")
    if sug.slicing:
        lines.append(f"  slicing: {sug.slicing}")
    return lines


def format_report(r: FitReport) -> str:
    head = [f"Dataset fit report  ({len(r.classes)} classes)"]
    head += [f"  {name:<5} {s.annotation_file}" for name, s in r.splits.items()]
    return "\n".join(head + _format_counts(r) + _format_sizes(r) + _format_advice(r))
