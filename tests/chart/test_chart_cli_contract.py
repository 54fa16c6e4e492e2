"""The chart's container args parse with the services' own argument parsers.

A flag the chart passes and a service does not know would crash-loop every pod; here it fails a test.
A service whose CLI is not in the tree yet is skipped, by name.
"""

from __future__ import annotations

import importlib

import pytest

from .chartlib import ROOT, VALUES_CASES, VALUES_IDS, container

# component -> (module with parse_args, the sub-command the pod's args start with, if any)
PARSERS = {
    "engine": ("engine_service.server.main", None),
    "router": ("router.main", "router"),
    "tokenizer": ("tokenizer_service.main", "tokenizer"),
}


def _parse_args(module_name: str):
    if not (ROOT / (module_name.replace(".", "/") + ".py")).is_file():
        pytest.skip(f"{module_name} is not in the tree yet")
    return importlib.import_module(module_name).parse_args


@pytest.mark.parametrize("component", sorted(PARSERS))
@pytest.mark.parametrize("values", VALUES_CASES, ids=VALUES_IDS)
def test_container_args_parse(render, values, component):
    module_name, command = PARSERS[component]
    parse_args = _parse_args(module_name)
    deployments = render(values).deployments(component)
    assert deployments
    for deployment in deployments:
        args = container(deployment, component)["args"]
        if command is not None:
            assert args[0] == command
            args = args[1:]
        try:
            parse_args(args)
        except SystemExit as exit:
            pytest.fail(f"{deployment['metadata']['name']}: `pagoda {component}` refuses {args} ({exit})")
