"""The Qt-free core of napari-samatch. Folders are the parts, the modules beside them what every part may use:

* ``data/``        volumes, reading and writing files, the training slices, review sessions
* ``match/``       the Match model (UNet) and what it trains with: augmentation, losses, prediction
* ``sam/``         SAM backends, the embedding cache, prompts, fusion and the refiner
* ``engine/``      the SAM-Match run: stages and steps, events, faults, persistence, validation, export
* ``evaluation/``  Dice, HD95 and ASD, and scoring a trained model
* ``errors``, ``config``, ``device``, ``checkpoint``: user-facing errors, run settings, devices, safe files

Nothing in this package imports napari or Qt, so it runs headless (CLI, tests, clusters). See
docs/architecture.md.
"""
