"""Model architectures, one file per family, picked through `registry.model_class`."""
