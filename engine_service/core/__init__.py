"""The engine's pure-Python core (no torch here): the configs, the sampling fields' one definition, the
KV block manager and the scheduler."""
