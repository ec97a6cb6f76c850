"""Package data: the shipped default detector bundle (``detector/``, see ``Detector.default``)."""
