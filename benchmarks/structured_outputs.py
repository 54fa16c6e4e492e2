"""Structured outputs on random weights: a JSON-schema workload, constrained against unconstrained, Pagoda
beside vLLM 0.26 (its default structured-output backend, xgrammar), in one call on one card.

    python -m benchmarks.structured_outputs --shape llama-1b --num-prompts 256 --peer vllm \
        --vllm-site /tmp/site --results-dir benchmarks

What it measures, per engine (engines one after the other, each in a process of its own for vLLM):
  - constrained: every prompt asks for JSON valid against SCHEMA (10 fields: strings, integers, a number,
    enums, a boolean, an array, a nested object), temperature 1, at most --max-tokens tokens; all prompts
    at once with max_num_seqs = --num-prompts (256 concurrent requests);
  - unconstrained: the same prompts, each generating exactly as many tokens as its constrained output had
    (EOS ignored), so both runs do the same work step for step;
  - throughput (generated tokens / s) of each and their ratio; for Pagoda also the grammar's compile time
    (the first one reads the vocabulary too) and its mask time per step (host: filling the step's rows).

Random weights need a real vocabulary of the shape's size for the grammar to mean anything: the llama
shapes get Llama 3's own tokenizer (128,000 BPE tokens + 256 special ones = the shapes' 128,256), built
from the `llama-models` package's tiktoken file (pip install --no-deps llama-models==0.3.0: no network at
run time). `--tokenizer DIR` takes any Hugging Face tokenizer folder instead (the CPU smoke test uses the
default model's); the model's vocab_size is then raised to the tokenizer's size if it is smaller.

One `structured_outputs` row to results.jsonl with --results-dir (pagoda.bench.results.record_result): the
table "Structured outputs" of RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pagoda.bench import shapes
from pagoda.bench.peers import subprocess_env
from pagoda.bench.results import git_commit, record_result
from pagoda.bench.throughput import VLLM_ENV

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 1000000},
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "email": {"type": "string", "maxLength": 32},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": 0, "maximum": 100},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string", "maxLength": 32},
                "city": {"type": "string", "maxLength": 16},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["street", "city", "zip"],
        },
        "status": {"enum": ["new", "open", "closed"]},
    },
    "required": ["id", "name", "email", "age", "score", "role", "active", "tags", "address", "status"],
}

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]


# ---- the model folder --------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character map, which byte-level BPE vocabularies are written in."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def write_llama3_tokenizer(folder: Path) -> int:
    """Llama 3's tokenizer as tokenizer.json, from the llama-models package's tiktoken ranks: the BPE merges
    are read back from the ranks (each token's splits into two tokens, in rank order). Returns its size."""
    import importlib.util

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the llama shapes need Llama 3's vocabulary: pip install --no-deps llama-models==0.3.0"
        )
    model_file = Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"
    ranks: dict[bytes, int] = {}
    for line in model_file.read_text().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    to_char = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_char[x] for x in b)

    vocab = {text(b): r for b, r in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        splits = [
            (token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks
        ]
        splits.sort(key=lambda s: (ranks[s[0]], ranks[s[1]]))
        merges += [(rank, text(a), text(b)) for a, b in splits]
    merges.sort(key=lambda m: m[0])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, a, b in merges], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    special = LLAMA3_SPECIAL + [
        f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA3_SPECIAL))
    ]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tok.get_vocab_size()


def write_model(shape: str, folder: Path, tokenizer_dir: str | None) -> int:
    """The weight-less model folder with a real tokenizer; returns the model's vocab_size."""
    import shutil

    shapes.write_model_dir(shape, folder)
    if tokenizer_dir:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy(Path(tokenizer_dir) / name, folder / name)
        from transformers import AutoTokenizer

        size = len(AutoTokenizer.from_pretrained(folder))
    else:
        size = write_llama3_tokenizer(folder)
    config = json.loads((folder / "config.json").read_text())
    if config["vocab_size"] < size:
        config["vocab_size"] = size
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return config["vocab_size"]


def prompts(num: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1000, min(vocab, 100000)) for _ in range(length)] for _ in range(num)]


# ---- Pagoda ------------------------------------------------------------------------------------------------


def run_pagoda(args, folder: Path, vocab: int) -> dict:
    from engine_service import LLM, SamplingParams, StructuredOutputsParams

    started = time.perf_counter()
    llm = LLM(
        str(folder),
        load_format="dummy",
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.input_len + args.max_tokens + 8,
        max_num_seqs=args.num_prompts,
        seed=args.seed,
    )
    startup_s = time.perf_counter() - started
    manager = llm.engine.structured
    schema = StructuredOutputsParams(json=json.dumps(SCHEMA))
    t0 = time.perf_counter()
    manager.check(schema)  # the first compile reads the vocabulary as well
    first_compile_s = time.perf_counter() - t0
    other = dict(SCHEMA, properties={**SCHEMA["properties"], "extra": {"type": "string", "maxLength": 8}})
    t0 = time.perf_counter()
    manager.check(StructuredOutputsParams(json=json.dumps(other)))
    compile_s = time.perf_counter() - t0

    ps = prompts(args.num_prompts, args.input_len, vocab, args.seed)
    warm = [
        SamplingParams(max_tokens=16, temperature=1.0, seed=i, structured_outputs=schema) for i in range(8)
    ]
    llm.generate(prompt_token_ids=(ps * 8)[:8], sampling_params=warm)

    def timed(params):
        manager.fill_s, manager.fill_rows, manager.fill_calls = 0.0, 0, 0
        steps0 = llm.engine.stats().num_steps
        t = time.perf_counter()
        outs = llm.generate(prompt_token_ids=ps, sampling_params=params)
        elapsed = time.perf_counter() - t
        tokens = [len(o.outputs[0].token_ids) for o in outs]
        return outs, tokens, elapsed, llm.engine.stats().num_steps - steps0

    constrained = [
        SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=i, structured_outputs=schema)
        for i in range(len(ps))
    ]
    outs, lengths, c_elapsed, c_steps = timed(constrained)
    mask = (manager.fill_s, manager.fill_rows, manager.fill_calls)
    valid = sum(_valid(o.outputs[0].text) for o in outs)
    free = [
        SamplingParams(max_tokens=n, temperature=1.0, seed=i, ignore_eos=True) for i, n in enumerate(lengths)
    ]
    _, u_lengths, u_elapsed, u_steps = timed(free)
    llm.engine.shutdown()
    return {
        "engine": "pagoda",
        "startup_s": round(startup_s, 2),
        "grammar_first_compile_s": round(first_compile_s, 4),
        "grammar_compile_s": round(compile_s, 4),
        **_rates(lengths, c_elapsed, u_lengths, u_elapsed, valid),
        "steps": {"constrained": c_steps, "unconstrained": u_steps},
        "mask_ms_per_step": round(1000 * mask[0] / max(1, mask[2]), 4),
        "mask_us_per_row": round(1e6 * mask[0] / max(1, mask[1]), 3),
        "masked_steps": mask[2],
    }


def _valid(text: str) -> bool:
    """Whether an output is JSON valid against SCHEMA (only parsed as JSON where jsonschema is missing)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    try:
        import jsonschema
    except ImportError:
        return isinstance(value, dict)
    try:
        jsonschema.validate(value, SCHEMA)
    except jsonschema.ValidationError:
        return False
    return True


def _rates(lengths, c_elapsed, u_lengths, u_elapsed, valid) -> dict:
    c_rate, u_rate = sum(lengths) / c_elapsed, sum(u_lengths) / u_elapsed
    return {
        "constrained_tok_s": round(c_rate, 1),
        "unconstrained_tok_s": round(u_rate, 1),
        "constrained_over_unconstrained": round(c_rate / u_rate, 4),
        "mean_output_tokens": round(sum(lengths) / len(lengths), 1),
        "valid_json": f"{valid}/{len(lengths)}",
    }


# ---- vLLM (a process of its own, with its site folder on PYTHONPATH) -------------------------------------


def run_vllm(args, folder: Path, vocab: int) -> dict:
    """vLLM in a process (and session) of its own, its site folder first on the path."""
    with tempfile.TemporaryDirectory() as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job.write_text(json.dumps({**vars(args), "folder": str(folder), "vocab": vocab}))
        env = {**subprocess_env(*([args.vllm_site] if args.vllm_site else [])), **VLLM_ENV}
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.structured_outputs", "--vllm-worker", str(job), str(out)],
            env=env,
            start_new_session=True,  # vLLM's engine core is a grandchild: it goes with the group
        )
        try:
            code = proc.wait(timeout=args.peer_timeout)
        except subprocess.TimeoutExpired:
            code = "timeout"
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if code != 0 or not out.is_file():
            return {"engine": "vllm", "error": f"exit status {code}"}
        return json.loads(out.read_text())


def vllm_worker(job_path: str, out_path: str) -> int:
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import StructuredOutputsParams

    job = json.loads(Path(job_path).read_text())
    started = time.perf_counter()
    llm = LLM(
        model=job["folder"],
        load_format="dummy",
        dtype=job["dtype"],
        max_model_len=job["input_len"] + job["max_tokens"] + 8,
        max_num_seqs=job["num_prompts"],
        gpu_memory_utilization=0.9,
        attention_backend="FLASH_ATTN",
        seed=job["seed"],
    )
    startup_s = time.perf_counter() - started
    ps = [
        TokensPrompt(prompt_token_ids=p)
        for p in prompts(job["num_prompts"], job["input_len"], job["vocab"], job["seed"])
    ]
    # Compact JSON, as Pagoda's default (vLLM's default lets the model write any whitespace).
    so = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    warm = [SamplingParams(max_tokens=16, temperature=1.0, seed=i, structured_outputs=so) for i in range(8)]
    llm.generate((ps * 8)[:8], warm, use_tqdm=False)

    def timed(params):
        t = time.perf_counter()
        outs = llm.generate(ps, params, use_tqdm=False)
        return outs, [len(o.outputs[0].token_ids) for o in outs], time.perf_counter() - t

    constrained = [
        SamplingParams(max_tokens=job["max_tokens"], temperature=1.0, seed=i, structured_outputs=so)
        for i in range(len(ps))
    ]
    outs, lengths, c_elapsed = timed(constrained)
    valid = sum(_valid(o.outputs[0].text) for o in outs)
    free = [
        SamplingParams(max_tokens=n, temperature=1.0, seed=i, ignore_eos=True) for i, n in enumerate(lengths)
    ]
    _, u_lengths, u_elapsed = timed(free)
    so_config = getattr(llm.llm_engine.vllm_config, "structured_outputs_config", None)
    backend = getattr(so_config, "backend", "unknown")
    result = {
        "engine": f"vllm {vllm.__version__}",
        "structured_output_backend": backend,
        "startup_s": round(startup_s, 2),
        **_rates(lengths, c_elapsed, u_lengths, u_elapsed, valid),
    }
    Path(out_path).write_text(json.dumps(result))
    return 0


# ---- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--vllm-worker"]:
        return vllm_worker(argv[1], argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="llama-1b", choices=list(shapes.SHAPES))
    p.add_argument("--tokenizer", default=None, help="a Hugging Face tokenizer folder (default: Llama 3's)")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer", action="append", choices=["vllm"], default=[])
    p.add_argument("--vllm-site", default="/tmp/site", help="vLLM's folder, first on its process's path")
    p.add_argument("--peer-timeout", type=float, default=1200.0)
    p.add_argument("--model-dir", default=None, help="where to write the model folder (default: a temp dir)")
    p.add_argument("--results-dir", default=None, help="record a row in its results.jsonl")
    p.add_argument("--commit", default=None, help="the code's commit (default: git's)")
    args = p.parse_args(argv)

    folder = Path(args.model_dir or tempfile.mkdtemp(prefix=f"pagoda-so-{args.shape}-"))
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_model(args.shape, folder, args.tokenizer)
    record = {
        "kind": "structured_outputs",
        "commit": args.commit or git_commit(),
        **_where(),
        "shape": args.shape,
        "vocab_size": vocab,
        "tokenizer": args.tokenizer or "llama3 (llama-models)",
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "max_tokens": args.max_tokens,
        "schema_fields": len(SCHEMA["properties"]),
    }
    record["pagoda"] = run_pagoda(args, folder, vocab)
    print(json.dumps(record["pagoda"]), flush=True)
    if "vllm" in args.peer:
        record["vllm"] = run_vllm(args, folder, vocab)
        print(json.dumps(record["vllm"]), flush=True)
    if args.results_dir:
        record = record_result(record, args.results_dir)
    print(json.dumps(record, indent=2))
    return 0


def _where() -> dict:
    """`card` on a GPU, else `machine` (as every results row says where it was measured)."""
    import platform

    import torch

    if torch.cuda.is_available():
        return {"card": torch.cuda.get_device_name()}
    return {"machine": f"{platform.machine()} {platform.processor() or ''}".strip()}


if __name__ == "__main__":
    sys.exit(main())
