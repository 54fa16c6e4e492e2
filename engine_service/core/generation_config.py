"""The model's own sampling defaults, from its generation_config.json (vLLM's `--generation-config auto`).

Model makers tune these (Qwen3: temperature 0.6, top_p 0.95, top_k 20); a request that sets none of a
field gets the model's value instead of the engine's generic default. Only the fields below are read,
as vLLM reads them; `do_sample` is ignored (vLLM ignores it too: temperature says it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# field -> (type, valid range check)
_FIELDS = {
    "temperature": (float, lambda v: v >= 0.0),
    "top_p": (float, lambda v: 0.0 < v <= 1.0),
    "top_k": (int, lambda v: v >= -1),
    "min_p": (float, lambda v: 0.0 <= v <= 1.0),
    "repetition_penalty": (float, lambda v: 0.0 < v <= 10.0),
}


def sampling_defaults(model_dir: str | Path) -> dict[str, float | int]:
    """The sampling fields generation_config.json sets (and that are in range); {} when it has none."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, float | int] = {}
    for name, (kind, in_range) in _FIELDS.items():
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        value = kind(value)
        if in_range(value):
            out[name] = value
    return out
