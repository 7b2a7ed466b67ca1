"""Data in and out: volumes, the files they come from and go to, the training slices, review sessions."""
