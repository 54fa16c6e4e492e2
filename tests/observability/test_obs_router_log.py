"""The router's request line, in process: prompts reach it only with --log-prompts; the request id
comes back in X-Request-Id whatever the outcome."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from router.app import start
from router.config import RouterConfig

SECRET = "the-launch-code-is-1234"


@pytest.mark.parametrize("log_prompts", [False, True])
async def test_prompts_are_logged_only_when_asked(caplog, log_prompts):
    config = RouterConfig(host="127.0.0.1", port=0, engines=("127.0.0.1:1",), log_prompts=log_prompts)
    runner = await start(config)
    port = runner.addresses[0][1]
    body = {"model": "m", "messages": [{"role": "user", "content": SECRET}]}
    try:
        with caplog.at_level(logging.INFO, logger="router.requests"):
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                async with session.post(url, json=body, headers={"X-Request-Id": "rid-7"}) as r:
                    assert r.status == 503  # no engine is up
                    assert r.headers["X-Request-Id"] == "rid-7"
    finally:
        await runner.cleanup()
    (record,) = [r for r in caplog.records if r.name == "router.requests"]
    assert record.getMessage() == "POST /v1/chat/completions 503" and record.fields["status"] == 503
    logged = " ".join(str(v) for v in record.fields.values())
    assert (SECRET in logged) is log_prompts
