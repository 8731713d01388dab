"""synth-audit: privacy audit for synthetic medical images."""

__version__ = "0.1.0"
