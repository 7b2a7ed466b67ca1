"""The Qt-free core of napari-samatch: data, models, SAM backends and the SAM-Match engine.

Nothing in this package imports napari or Qt, so it runs headless (CLI, tests, clusters).
"""
