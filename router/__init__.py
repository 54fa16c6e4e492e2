"""The OpenAI-compatible HTTP router: validation, auth, SSE and errors in OpenAI's format in front of the
tokenizer service and a fleet of engines, which it discovers, health-checks and picks between.

Torch-free by design: it runs in the small router image.
"""
