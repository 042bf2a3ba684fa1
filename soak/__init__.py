"""`make soak`: faults under load (soak/__main__.py)."""
