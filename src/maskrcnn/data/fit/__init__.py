"""The dataset-fit report: object sizes at the training scale against the anchors (``boxes`` reads
them from the json as training measures them, ``anchors`` fits anchor sizes, ``report`` computes the
report and ``report_text`` writes the text ``scripts/dataset_report.py`` and training's run summary
print)."""
