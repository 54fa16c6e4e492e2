"""Routing policies: small classes behind `Policy.pick`, chosen by name with `--policy`."""

from __future__ import annotations

from router.config import RouterConfig
from router.upstream.policies.base import Policy, Routable, RouteRequest
from router.upstream.policies.kv_aware import KvAware
from router.upstream.policies.least_requests import LeastRequests
from router.upstream.policies.power_of_two import PowerOfTwo
from router.upstream.policies.prefix_affinity import PrefixAffinity
from router.upstream.policies.round_robin import RoundRobin
from router.upstream.policies.session import Session

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (PrefixAffinity, KvAware, RoundRobin, LeastRequests, PowerOfTwo, Session)
}


def make_policy(config: RouterConfig) -> Policy:
    if config.policy == "prefix_affinity":
        return PrefixAffinity(config.affinity_blocks, config.affinity_load_factor)
    if config.policy == "kv_aware":
        return KvAware(config.affinity_blocks, config.affinity_load_factor, config.kv_load_threshold)
    if config.policy == "session":
        return Session(config.affinity_load_factor)
    if config.policy not in POLICIES:
        raise ValueError(f"unknown policy {config.policy!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[config.policy]()


__all__ = ["POLICIES", "Policy", "RouteRequest", "Routable", "make_policy"]
