"""COCO evaluation of detections (box and mask AP), DDP aware."""

from maskrcnn.evaluation.coco_evaluator import CocoEvaluator

__all__ = ["CocoEvaluator"]
