"""Running a trained network outside training.

``predict_images.py``: image files -> PNG overlays + COCO results json (``src/predict.py``);
``inputs.py`` lists what ``input=`` names and names the overlays, ``predict_options.py`` checks the
other config values before the model is loaded.
``export_graph.py``: ONNX / TorchScript export of the inference network (``scripts/export.py``).
``optimize/``: the CPU inference copy ``inference=fast`` builds (``optimize_for_inference``).
``tta.py``: test-time augmentation for eval and predict (``tta=flip``); ``tta_options.py`` checks
the ``tta`` config and builds it.
"""
