"""Flags made from config dataclasses (pagoda/cli_args.py): each field's type, default and help become its
flag, and each service's flags with no arguments build exactly its config's defaults."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from engine_service.core.config import EngineConfig
from engine_service.server import main as engine_main
from engine_service.server.service_config import EngineServiceConfig
from pagoda import serve
from pagoda.cli_args import add_config_args, config_values
from router import main as router_main
from router.config import RouterConfig
from tokenizer_service import main as tokenizer_main
from tokenizer_service.config import TokenizerConfig


@dataclass(frozen=True)
class Example:
    nested: object = field(default=None, metadata={"cli": False})
    size: int = field(default=3, metadata={"help": "a size"})
    limit: int | None = field(default=None, metadata={"help": "a limit"})
    ratio: float = field(default=0.5, metadata={"help": "a ratio"})
    mode: Literal["fast", "slow"] = field(default="fast", metadata={"help": "a mode"})
    on: bool = field(default=True, metadata={"help": "on or off"})
    names: tuple[str, ...] = field(default=(), metadata={"flag": "name", "help": "repeatable"})
    wait_s: float = field(default=1.0, metadata={"help": "seconds"})


def parse(argv: list[str], only=None, **kw) -> dict:
    p = argparse.ArgumentParser()
    add_config_args(p, Example, only=only, **kw)
    return config_values(p.parse_args(argv), Example, only=only)


def test_each_type_makes_its_flag():
    assert parse([]) == {
        "size": 3,
        "limit": None,
        "ratio": 0.5,
        "mode": "fast",
        "on": True,
        "names": (),
        "wait_s": 1.0,
    }
    argv = ["--size", "4", "--limit", "9", "--ratio", "2", "--mode", "slow", "--no-on", "--name", "a"]
    assert parse([*argv, "--name", "b", "--wait", "3"]) == {
        "size": 4,
        "limit": 9,
        "ratio": 2.0,
        "mode": "slow",
        "on": False,
        "names": ("a", "b"),
        "wait_s": 3.0,
    }
    with pytest.raises(SystemExit):
        parse(["--mode", "medium"])
    with pytest.raises(SystemExit):
        parse(["--size", "x"])


def test_only_defaults_and_choices():
    assert parse(
        ["--mode", "slow"], only=("mode",), defaults={"mode": "slow"}, choices={"mode": ["slow"]}
    ) == {"mode": "slow"}
    with pytest.raises(SystemExit):
        parse(["--size", "1"], only=("mode",))


def test_a_field_without_help_gets_no_silent_flag():
    @dataclass(frozen=True)
    class Careless:
        timeout_s: float = 1.0

    with pytest.raises(TypeError, match="Careless.timeout_s has no help"):
        add_config_args(argparse.ArgumentParser(), Careless)


def test_no_flags_build_each_services_default_config(tmp_path, monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert router_main.parse_args([]) == RouterConfig()
    assert tokenizer_main.build_config(tokenizer_main.parse_args([])) == TokenizerConfig()
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    built = engine_main.build_config(engine_main.parse_args(["--model", str(tmp_path)]))
    engine = EngineConfig(model=str(tmp_path), served_model_name=built.engine.served_model_name)
    assert built == EngineServiceConfig(engine=engine)


def test_existing_flag_spellings_still_parse():
    """Flags that kept their names where they differ from their fields'."""
    config = router_main.parse_args(
        ["--engine", "a:1", "--engine", "b:2", "--api-key", "k", "--prefix-affinity-blocks", "3"]
        + ["--load-factor", "2", "--dns-interval", "7", "--log-prompts", "--salt-cache-per-api-key"]
    )
    assert (config.engines, config.api_keys, config.affinity_blocks) == (("a:1", "b:2"), ("k",), 3)
    assert (config.affinity_load_factor, config.dns_interval_s, config.log_prompts) == (2.0, 7.0, True)
    args = engine_main.parse_args(["--no-prefix-caching", "--enforce-eager", "--shutdown-grace-period", "5"])
    assert (args.enable_prefix_caching, args.enforce_eager, args.shutdown_grace_period_s) == (
        False,
        True,
        5.0,
    )


def test_serve_and_hardening_flags_come_from_the_configs():
    """`pagoda serve`'s flags are ServeConfig's fields; the hardening flags (issue 25) are fields too."""
    assert serve.parse_args([]) == serve.ServeConfig()
    config = serve.parse_args(
        ["--api-key", "a", "--api-key", "b", "--startup-timeout", "5", "--device", "cpu"]
    )
    assert (config.api_keys, config.startup_timeout_s, config.device) == (("a", "b"), 5.0, "cpu")
    with pytest.raises(SystemExit):
        serve.parse_args(["--api-key", "a", "--api-key-file", "keys"])  # one or the other
    router = router_main.parse_args(
        ["--idle-timeout", "5", "--max-connections", "64", "--max-sequences-per-request", "8"]
        + ["--trust-request-chat-template", "--grpc-token-file", "t"],
        environ={"PAGODA_API_KEY": "k"},
    )
    assert (router.idle_timeout_s, router.max_connections, router.max_sequences_per_request) == (5.0, 64, 8)
    assert router.trust_request_chat_template and router.grpc_token_file == "t" and router.api_keys == ("k",)
    tokenizer = tokenizer_main.parse_args(["--template-timeout", "1.5", "--trust-request-chat-template"])
    assert (tokenizer.template_timeout_s, tokenizer.trust_request_chat_template) == (1.5, True)
    engine = engine_main.parse_args(["--liveness-timeout", "3", "--grpc-token-file", "t"])
    assert (engine.liveness_timeout_s, engine.grpc_token_file, engine.host) == (3.0, "t", "127.0.0.1")


def test_optional_literal_fields_make_choice_flags():
    """`Literal[...] | None` (EngineConfig.quantization) is a choice flag defaulting to None, and the
    FP8 settings reach the engine's config from `pagoda engine`'s flags."""

    @dataclass(frozen=True)
    class Quant:
        method: Literal["fp8"] | None = field(default=None, metadata={"help": "a method"})

    p = argparse.ArgumentParser()
    add_config_args(p, Quant)
    assert config_values(p.parse_args([]), Quant) == {"method": None}
    assert config_values(p.parse_args(["--method", "fp8"]), Quant) == {"method": "fp8"}
    with pytest.raises(SystemExit):
        p.parse_args(["--method", "int4"])
    args = engine_main.parse_args(["--quantization", "fp8", "--kv-cache-dtype", "fp8"])
    assert (args.quantization, args.kv_cache_dtype) == ("fp8", "fp8")
    with pytest.raises(SystemExit):
        engine_main.parse_args(["--kv-cache-dtype", "int8"])
