"""gRPC keepalive, agreed in one place between the router (the client) and the engines and the tokenizer
(the servers).

The router pings each of its connections every `time_s`, idle or not, so that a peer that vanished
without a FIN (a node gone, a conntrack entry dropped) is found within `time_s + timeout_s` instead of at
the next request. A gRPC server polices pings: by default it wants at most one every 5 minutes and none
while no call is in flight, and after two such "strikes" it closes the connection with GOAWAY
`too_many_pings` (an idle tokenizer did exactly that to the router's 10 s pings). So the servers here
accept pings with no call in flight, as often as every `min_ping_interval_s`, which must not exceed the
router's `time_s`:

    router   keepalive_time_s = 10  ──ping every 10 s──▶  engine, tokenizer: accept pings ≥ 5 s apart
                                                           (min_ping_interval_s = 5), calls or not

The servers also ping their clients (every `SERVER_TIME_S`), so that a stream to a router that vanished
is cancelled and its KV blocks freed.
"""

from __future__ import annotations

# Client (the router): ping an idle connection this often, and drop it when a ping goes unanswered this long.
CLIENT_TIME_S = 10.0
CLIENT_TIMEOUT_S = 5.0
# Servers (engine, tokenizer): the shortest gap between a client's pings that is not a strike. Half the
# router's interval, so that timer jitter never makes a strike of a ping that was on time.
SERVER_MIN_PING_INTERVAL_S = 5.0
# Servers: how often they ping each client, and how long they wait for the answer.
SERVER_TIME_S = 60.0
SERVER_TIMEOUT_S = 20.0


def client_options(
    time_s: float = CLIENT_TIME_S, timeout_s: float = CLIENT_TIMEOUT_S
) -> list[tuple[str, int]]:
    """Channel options of a client that pings every `time_s`; the servers must accept that interval."""
    return [
        ("grpc.keepalive_time_ms", _ms(time_s)),
        ("grpc.keepalive_timeout_ms", _ms(timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),  # idle connections too: that is when peers vanish unseen
        ("grpc.http2.max_pings_without_data", 0),  # no cap on pings between data frames
    ]


def server_options(min_ping_interval_s: float = SERVER_MIN_PING_INTERVAL_S) -> list[tuple[str, int]]:
    """Server options that accept a client's pings `min_ping_interval_s` apart or more, calls or not."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: the C name says RECV, the string does not.
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(min_ping_interval_s)),
        # Pings closer than that are still refused, after this many strikes (gRPC's default).
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_time_ms", _ms(SERVER_TIME_S)),
        ("grpc.keepalive_timeout_ms", _ms(SERVER_TIMEOUT_S)),
    ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
