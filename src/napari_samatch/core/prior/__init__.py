"""The painted slices as a prior: shape interpolation between them, and its fusion with the Match model."""
