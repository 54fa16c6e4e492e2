"""Structured outputs on the engine side: constraints compiled into grammars over the model's vocabulary
(xgrammar), one grammar state per sequence, and the token bitmask of each step's constrained rows.

    front (gRPC)   grammar.parse(params)        syntax only, no vocabulary: a bad schema is INVALID_ARGUMENT
                                                before anything is queued (validator.py, off the event loop)
    engine         manager.add(request)         compile in a thread pool (compiler.py, cached by the
                                                constraint); the request waits outside the scheduler
                   manager.take_ready()         compiled: a GrammarState per sequence, then scheduled
                   scheduler.update_from_output GrammarState.accept(token) for each resolved token
                   manager.fill_bitmask(step)   the next draw's allowed tokens, on the host, per row
    sampler        dispatch.apply_token_bitmask -inf where a row's bit is 0, on the device

See docs/ARCHITECTURE.md (structured outputs) for how the mask of step n+1 waits for step n's tokens while
the device runs step n+1's forward pass.
"""
