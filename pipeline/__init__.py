"""hazeflow runtime: streaming graph, sources, stages, sinks, CLI. Never imports torch at import time."""
__version__ = "0.1.0"
