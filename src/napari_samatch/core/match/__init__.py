"""The Match model (a UniMatch-style UNet) and what it trains with: augmentation, losses, prediction."""
