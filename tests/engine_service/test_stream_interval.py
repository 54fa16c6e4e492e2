"""--stream-interval: fewer, bigger messages; the first token and the finish still go at once."""

from __future__ import annotations

from engine_service.engine.async_engine import RateMeter
from pagoda.engine.v1 import engine_pb2 as pb
from tests.engine_service.server_thread import ServerThread, tiny_engine


def test_messages_carry_the_interval(tiny_model_dir, scripts):
    with ServerThread(tiny_engine(tiny_model_dir), stream_interval=4) as s:
        req = pb.GenerateRequest(
            prompt_token_ids=pb.TokenIds(ids=scripts["loop"][:1]),
            sampling_params=pb.SamplingParams(temperature=0.0, max_tokens=30),
        )
        msgs = list(s.stub.Generate(req, timeout=30))
    sizes = [len(m.token_ids) for m in msgs]
    assert sum(sizes) == 30 and sizes[0] < 4  # the first token is not held back for the interval
    assert all(n >= 4 for n in sizes[1:-1])
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert "".join(m.text for m in msgs).startswith(" green blue red green")


def test_rate_meter_window():
    meter = RateMeter(window_s=5.0)
    for t in range(11):  # 100 tokens a second for 10 s
        meter.record(100 * t, now=float(t))
    assert meter.rate(now=10.0) == 100.0
    for t in range(11, 21):  # idle, recorded every second (as the watchdog does)
        meter.record(1000, now=float(t))
    assert meter.rate(now=20.0) == 0.0
    meter.record(1500, now=21.0)  # a burst: 500 tokens in the last second
    assert meter.rate(now=21.0) == 100.0
