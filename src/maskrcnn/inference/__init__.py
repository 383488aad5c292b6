"""Running a trained network outside training.

``predict_images.py``: image files -> PNG overlays + COCO results json (``src/predict.py``).
``export_graph.py``: ONNX / TorchScript export of the inference network (``scripts/export.py``).
"""
