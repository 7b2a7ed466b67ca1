"""The SAM-Match engine: the run loop and its steps, events, faults, persistence, validation, export."""
