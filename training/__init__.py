"""Models, losses, data and training loops (needs torch)."""
