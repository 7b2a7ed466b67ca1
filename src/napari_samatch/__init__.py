"""napari-samatch: SAM-Match semi-supervised segmentation in napari."""

__version__ = "0.1.0"
