"""The engine's pure-Python core: the KV block manager and the scheduler (no torch here)."""
