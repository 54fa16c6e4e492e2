"""One request through router, tokenizer and engine processes makes one trace: the router's span for the
HTTP request (under the client's `traceparent`, when it sends one), a child span per gRPC call it makes,
and under those the tokenizer's and the engine's own spans, received by a real OTLP/gRPC collector."""

from __future__ import annotations

import time

from obs_stack import MODEL

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def trace_spans(stack, trace_id: str, services: int = 3, timeout_s: float = 15.0) -> list:
    """The trace's spans, once the three services' server spans arrived (spans leave in batches)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = [s for s in stack.receiver.snapshot() if s.trace_id == trace_id]
        if len({s.service for s in spans if s.kind == SERVER}) >= services:
            time.sleep(0.3)  # the router's span ends last: let its batch come in
            return [s for s in stack.receiver.snapshot() if s.trace_id == trace_id]
        time.sleep(0.1)
    raise AssertionError(f"trace {trace_id}: only {[(s.service, s.name) for s in spans]}")


def one(spans, service: str, name: str, kind: int):
    found = [s for s in spans if s.service == service and s.name == name and s.kind == kind]
    assert len(found) == 1, (service, name, [(s.service, s.name, s.kind) for s in spans])
    return found[0]


def test_a_request_is_one_trace_across_the_three_services(stack):
    client = stack.client()
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Trace me."}],
        max_tokens=6,
        extra_body={"ignore_eos": True},
        extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )
    spans = trace_spans(stack, TRACE_ID)

    http = one(spans, "pagoda-router", "POST /v1/chat/completions", SERVER)
    assert http.parent_span_id == PARENT_ID  # under the client's own span
    assert http.attributes["http.response.status_code"] == 200
    assert http.attributes["gen_ai.request.model"] == MODEL
    assert http.attributes["gen_ai.usage.output_tokens"] == 6

    encode_call = one(spans, "pagoda-router", "TokenizerService/Encode", CLIENT)
    encode = one(spans, "pagoda-tokenizer", "TokenizerService/Encode", SERVER)
    assert encode_call.parent_span_id == http.span_id and encode.parent_span_id == encode_call.span_id
    assert encode.attributes["pagoda.num_tokens"] == r.usage.prompt_tokens

    generate_call = one(spans, "pagoda-router", "EngineService/Generate", CLIENT)
    generate = one(spans, "pagoda-engine", "EngineService/Generate", SERVER)
    assert generate_call.parent_span_id == http.span_id and generate.parent_span_id == generate_call.span_id
    assert generate.attributes["gen_ai.usage.input_tokens"] == r.usage.prompt_tokens
    assert generate.attributes["gen_ai.usage.output_tokens"] == 6
    assert generate.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert generate.attributes["rpc.grpc.status_code"] == encode.attributes["rpc.grpc.status_code"] == 0
    events = [name for name, _, _ in generate.events]
    assert events == ["queued", "scheduled", "first_token", "finished"]
    times = [t for _, t, _ in generate.events]
    assert times == sorted(times)
    # The spans nest in time as they do in the tree (clocks of one machine).
    assert http.start_ns <= encode_call.start_ns <= encode.start_ns <= encode.end_ns <= encode_call.end_ns
    assert encode_call.end_ns <= generate_call.start_ns <= generate.start_ns
    # The engine's answer was complete before the router's response ended; its server span may close a
    # moment later (the stream's teardown after the last message), so the "finished" event is compared.
    assert times[-1] <= http.end_ns


def test_a_request_without_trace_context_starts_its_own_trace(stack):
    before = {s.trace_id for s in stack.receiver.snapshot()}
    stack.client().completions.create(model=MODEL, prompt="Hello", max_tokens=2)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        new = [s for s in stack.receiver.snapshot() if s.trace_id not in before and s.kind == SERVER]
        routers = [s for s in new if s.service == "pagoda-router"]
        if routers:
            break
        time.sleep(0.1)
    assert len(routers) == 1 and routers[0].parent_span_id == ""
    spans = trace_spans(stack, routers[0].trace_id)
    assert {s.service for s in spans} == {"pagoda-router", "pagoda-tokenizer", "pagoda-engine"}
