"""The tokenizer service: text and chat messages to token ids and back, over gRPC, on CPUs.

`pagoda tokenizer --model DIR` (or `python -m tokenizer_service`) runs it; see `main.py`.
"""
