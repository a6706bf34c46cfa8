"""Inference backends behind one Runner interface; export and engine build."""
