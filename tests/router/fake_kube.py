"""A fake Kubernetes API server for EndpointSlices: the real discovery.k8s.io/v1 list and watch JSON.

List answers `EndpointSliceList` with a `resourceVersion`; `?watch=true` streams one JSON event per line
(ADDED / MODIFIED / DELETED, then ERROR 410 for a resourceVersion older than the last compaction),
replaying what happened after the given version and then following new changes until `timeoutSeconds`.
"""

from __future__ import annotations

import asyncio
import copy
import json

from aiohttp import web

PATH = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"


def endpoint_slice(name: str, service: str, endpoints: list[dict], namespace: str = "llm") -> dict:
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints or None,  # the API server sends null for a slice with no endpoints
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
    }


def endpoint(ip: str, ready: bool | None = True, terminating: bool | None = None) -> dict:
    conditions = {}
    if ready is not None:
        conditions["ready"] = ready
    if terminating is not None:
        conditions["terminating"] = terminating
        conditions["serving"] = True
    return {"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": f"engine-{ip}"}}


class FakeKubeApi:
    def __init__(self) -> None:
        self.version = 100
        self.compacted = 0  # watches from a version below this get 410 Gone
        self.slices: dict[tuple[str, str], dict] = {}
        self.events: list[tuple[int, str, dict]] = []  # (version, type, object)
        self.requests: list[dict] = []
        self.gone_sent = 0
        self._changed = asyncio.Condition()
        self._closing = False
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        app.on_shutdown.append(self._wake_all)
        self.runner = web.AppRunner(app, shutdown_timeout=1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    # -- changes, as the cluster makes them -------------------------------------------------------------

    async def apply(self, obj: dict) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        kind = "MODIFIED" if key in self.slices else "ADDED"
        await self._record(kind, key, copy.deepcopy(obj))

    async def delete(self, namespace: str, name: str) -> None:
        await self._record("DELETED", (namespace, name), self.slices[(namespace, name)])

    async def compact(self) -> None:
        """Forgets history: watches from before now get 410 Gone, and open watches are closed."""
        self.compacted = self.version + 1
        self.events.clear()
        async with self._changed:
            self._changed.notify_all()

    async def _record(self, kind: str, key: tuple[str, str], obj: dict) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        if kind == "DELETED":
            self.slices.pop(key)
        else:
            self.slices[key] = obj
        self.events.append((self.version, kind, copy.deepcopy(obj)))
        async with self._changed:
            self._changed.notify_all()

    # -- the API ----------------------------------------------------------------------------------------

    def _selected(self, obj: dict, namespace: str, selector: str) -> bool:
        if obj["metadata"]["namespace"] != namespace:
            return False
        labels = obj["metadata"].get("labels") or {}
        for term in filter(None, (selector or "").split(",")):
            key, _, value = term.partition("=")
            if labels.get(key) != value:
                return False
        return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        namespace, query = request.match_info["namespace"], request.query
        self.requests.append(dict(query))
        selector = query.get("labelSelector", "")
        if query.get("watch") not in ("true", "1"):
            items = [o for o in self.slices.values() if self._selected(o, namespace, selector)]
            return web.json_response(
                {
                    "kind": "EndpointSliceList",
                    "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"resourceVersion": str(self.version)},
                    "items": items,
                }
            )
        return await self._watch(request, namespace, selector, int(query.get("resourceVersion") or 0))

    async def _watch(self, request, namespace: str, selector: str, since: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if since < self.compacted:
            gone = {
                "kind": "Status",
                "status": "Failure",
                "reason": "Expired",
                "code": 410,
                "message": f"too old resource version: {since} ({self.compacted})",
            }
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            self.gone_sent += 1
            return response
        timeout = float(request.query.get("timeoutSeconds") or 30)
        compacted_at_start = self.compacted
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent = since
        while not self._closing and self.compacted == compacted_at_start:
            for version, kind, obj in self.events:
                if version > sent and self._selected(obj, namespace, selector):
                    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                sent = max(sent, version)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    break
        return response

    async def _wake_all(self, app) -> None:
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
