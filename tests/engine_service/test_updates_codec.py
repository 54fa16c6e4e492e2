"""The compact form of a step's updates on the pipe from the engine process: nothing lost or reordered
within a sample, and the plain updates really travel as columns."""

from __future__ import annotations

import pickle

from engine_service.core.outputs import SequenceUpdate, TokenLogprobs
from engine_service.engine import updates_codec


def update(request_id, index=0, tokens=(5,), logprobs=None, finish=None, stop=None, cached=0):
    return SequenceUpdate(request_id, index, list(tokens), logprobs, finish, stop, 12, cached)


def test_round_trip_keeps_every_update():
    updates = [
        update("plain-a", cached=16),
        update("finished", tokens=(2,), finish="stop", stop=2),
        update("plain-b", tokens=(7,)),
        update("n2", index=1, tokens=(9,)),
        update("logprobs", logprobs=[TokenLogprobs(5, -0.5, [(5, -0.5), (6, -1.5)])]),
        update("length", finish="length"),
    ]
    packed = updates_codec.pack(updates)
    assert packed.request_ids == ["plain-a", "plain-b"]
    assert [u.request_id for u in packed.other] == ["finished", "n2", "logprobs", "length"]
    back = updates_codec.unpack(pickle.loads(pickle.dumps(packed)))
    key = lambda u: (u.request_id, u.index)  # noqa: E731
    assert sorted(back, key=key) == sorted(updates, key=key)


def test_plain_updates_pickle_smaller_than_the_objects():
    updates = [update(f"request-{i}", tokens=(1000 + i,), cached=i) for i in range(256)]
    packed = updates_codec.pack(updates)
    assert not packed.other
    assert len(pickle.dumps(packed)) < len(pickle.dumps(updates)) * 0.7
    assert updates_codec.unpack(packed) == updates


def test_empty_step():
    assert updates_codec.unpack(updates_codec.pack([])) == []
