"""The engines' own Prometheus metrics on the router's /metrics, for `pagoda serve` (--engine-metrics-url).

On one machine nobody runs a Prometheus per engine, so the router reads each engine's /metrics when it
is scraped (concurrently, a short timeout each) and appends their families, every sample labelled with
`engine` (the URL's host:port) so that engines stay apart. Process and Python runtime families are left
out (the router reports its own under those names). An engine that does not answer in time is skipped.
In Kubernetes, scrape each engine pod instead (the chart's ServiceMonitor does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

_SKIPPED = ("process_", "python_")  # the router's own families have these names


class EngineMetrics:
    def __init__(self, urls: tuple[str, ...], timeout_s: float = 2.0):
        self._urls = urls
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def render(self) -> bytes:
        """Every answering engine's families, merged by name, in the text exposition format."""
        if not self._urls:
            return b""
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            texts = await asyncio.gather(*(self._fetch(session, url) for url in self._urls))
        families: dict[str, Metric] = {}
        for url, text in zip(self._urls, texts, strict=True):
            if text is not None:
                _merge(families, text, urlsplit(url).netloc)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(list(families.values())))
        return generate_latest(registry)

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> str | None:
        try:
            async with session.get(url) as r:
                r.raise_for_status()
                return await r.text()
        except (aiohttp.ClientError, TimeoutError) as err:
            log.debug("engine metrics from %s: %s", url, err)
            return None


def _merge(families: dict[str, Metric], text: str, engine: str) -> None:
    for family in text_string_to_metric_families(text):
        if family.name.startswith(_SKIPPED):
            continue
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(family.name, family.documentation, family.type)
        for s in family.samples:
            merged.samples.append(Sample(s.name, {**s.labels, "engine": engine}, s.value, s.timestamp))


class _Families:
    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
