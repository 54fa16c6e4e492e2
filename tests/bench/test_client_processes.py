"""pagoda.bench.client_processes: shares dealt to processes, results merged back, a dead client reported."""

from __future__ import annotations

import os
import time

import pytest

from pagoda.bench import client_processes


def doubling_worker(k, items, ready, results) -> None:
    ready.wait(60)
    results.put((k, (time.monotonic(), [2 * x for x in items])))


def dying_worker(k, items, ready, results) -> None:
    ready.wait(60)
    if k == 1:
        os._exit(3)
    results.put((k, (time.monotonic(), list(items))))


def test_deal_and_merge_are_inverse():
    items = list(range(11))
    shares = client_processes.deal(items, 3)
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert client_processes.merge(shares, len(items)) == items


def test_every_share_runs_in_its_own_process_and_comes_back_in_order():
    items = list(range(10))
    shares = [(share,) for share in client_processes.deal(items, 3)]
    elapsed, parts = client_processes.run(doubling_worker, shares, timeout_s=60)
    assert elapsed >= 0 and client_processes.merge(parts, len(items)) == [2 * x for x in items]


def test_a_client_that_dies_is_reported_at_once():
    shares = [(share,) for share in client_processes.deal(list(range(6)), 2)]
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"client processes \[1\] died"):
        client_processes.run(dying_worker, shares, timeout_s=600)
    assert time.monotonic() - start < 60
