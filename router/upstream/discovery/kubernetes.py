"""Engines from Kubernetes EndpointSlices (discovery.k8s.io/v1): list, then watch, re-listing every
`resync_s` and whenever the watch expires (410 Gone) or fails.

Only endpoints that are ready and not terminating count: a pod that fails its readiness probe or got
SIGTERM leaves the set at once, while its live streams finish (the registry keeps those running).

The `kubernetes` client is synchronous, so list and watch run in a thread that hands each new address
set to the event loop. Slices are read as raw JSON: the client's typed models reject an EndpointSlice
with `"endpoints": null`, which is what the API server sends for a Service with no pods.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

from router.upstream.discovery import Update, host_port

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def load_api_client(kubeconfig: str | None = None):
    """The in-cluster configuration when running in a pod, else the kubeconfig file."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise SystemExit(
            "Kubernetes discovery needs the `kubernetes` package: pip install 'pagoda[k8s]'"
        ) from None
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


def ready_addresses(endpoint_slice: dict, port: int) -> set[str]:
    """host:port of every endpoint that is ready and not terminating (a missing `ready` means ready)."""
    out = set()
    for endpoint in endpoint_slice.get("endpoints") or ():
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        addresses = endpoint.get("addresses") or ()
        if addresses:  # all addresses of one endpoint reach the same pod: the first will do
            out.add(host_port(addresses[0], port))
    return out


class EndpointSliceDiscovery:
    def __init__(
        self,
        api_client,
        namespace: str,
        *,
        service: str | None,
        label_selector: str | None,
        port: int,
        resync_s: float = 300.0,
        watch_timeout_s: int = 60,
    ):
        selectors = [f"{SERVICE_NAME_LABEL}={service}"] if service else []
        selectors += [label_selector] if label_selector else []
        if not selectors:
            raise ValueError("EndpointSlice discovery needs a service name or a label selector")
        self.api_client = api_client
        self.namespace = namespace
        self.selector = ",".join(selectors)
        self.port = port
        self.resync_s = resync_s
        self.watch_timeout_s = watch_timeout_s
        self._stop = threading.Event()

    async def run(self, update: Update) -> None:
        loop = asyncio.get_running_loop()

        def publish(addresses: frozenset[str]) -> None:
            loop.call_soon_threadsafe(update, addresses)

        thread = threading.Thread(
            target=self._sync_forever, args=(publish,), name="endpointslices", daemon=True
        )
        thread.start()
        try:
            await asyncio.Future()  # until cancelled
        finally:
            # The thread notices between events; a watch on a quiet server ends within watch_timeout_s.
            self._stop.set()

    def _sync_forever(self, publish) -> None:
        from kubernetes.client import ApiException, DiscoveryV1Api

        api = DiscoveryV1Api(self.api_client)
        backoff_s = 0.5
        while not self._stop.is_set():
            try:
                self._list_and_watch(api, publish)
                backoff_s = 0.5
            except ApiException as err:
                if err.status == 410:
                    continue  # our resourceVersion is too old: list again
                log.warning(
                    "EndpointSlice %s in %s: %s %s", self.selector, self.namespace, err.status, err.reason
                )
            except Exception as err:  # a dropped connection, a timeout: list again after a pause
                if self._stop.is_set():
                    return
                log.warning("EndpointSlice watch failed (%s: %s); retrying", type(err).__name__, err)
            self._stop.wait(backoff_s)
            backoff_s = min(30.0, backoff_s * 2)

    def _list_and_watch(self, api, publish) -> None:
        from kubernetes.client import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        listing = json.loads(
            api.list_namespaced_endpoint_slice(
                self.namespace, label_selector=self.selector, _preload_content=False, _request_timeout=30
            ).data
        )
        slices = {s["metadata"]["name"]: ready_addresses(s, self.port) for s in listing.get("items") or ()}
        published = frozenset().union(*slices.values())
        publish(published)
        version = listing["metadata"].get("resourceVersion", "")
        resync_at = time.monotonic() + self.resync_s
        while not self._stop.is_set() and (remaining := resync_at - time.monotonic()) > 0:
            response = api.list_namespaced_endpoint_slice(
                self.namespace,
                label_selector=self.selector,
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=max(1, int(min(self.watch_timeout_s, remaining))),
                _preload_content=False,
                _request_timeout=(10, self.watch_timeout_s + 10),
            )
            try:
                for line in iter_resp_lines(response):
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                    version = obj["metadata"].get("resourceVersion", version)
                    if kind == "DELETED":
                        slices.pop(obj["metadata"]["name"], None)
                    elif kind in ("ADDED", "MODIFIED"):
                        slices[obj["metadata"]["name"]] = ready_addresses(obj, self.port)
                    current = frozenset().union(*slices.values())
                    if current != published:
                        publish(current)
                        published = current
            finally:
                response.release_conn()
