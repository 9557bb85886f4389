"""The demo model (model.py, weights beside it) and what only its training and its benchmark use:
the shape pictures and captions (shapes.py) and the detector that reads them back (detector.py)."""
