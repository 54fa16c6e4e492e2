"""Pagoda: serve open-weight language models behind an OpenAI-compatible API.

The `pagoda` package holds the command line (`pagoda.cli`), the shared model resolution
(`pagoda.models`) and the generated gRPC code (`pagoda.engine.v1`, `pagoda.tokenizer.v1`).
"""

__version__ = "0.1.0"
