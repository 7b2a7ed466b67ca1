"""The Match model (a UniMatch-style UNet)."""
