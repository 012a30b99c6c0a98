"""`audit path/config.json`: the architecture a Hugging Face model config describes, built from transformers' code.

Nothing is downloaded: the config names the model type (`AutoConfig.for_model`) and usually the architecture
(`"architectures": ["LlamaForCausalLM"]`, the class with its head); without one, the base `AutoModel`.
transformers stays optional: without it, the target fails with one line saying so. `--kwargs` override config
fields (`'{"num_hidden_layers": 2}'`). The model is built like any other, so on meta when it would not fit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from auditor.errors import TargetError, first_line
from auditor.locations import display_path


def config_factory(path: Path, overrides: dict[str, Any]) -> tuple[str, Callable[[], Any]]:
    """The architecture's class name and a function that builds it from the config at `path`."""
    where = display_path(str(path))
    fields = _read(path, where)
    try:
        import transformers
    except ImportError:
        raise TargetError(f"{where}: a Hugging Face config needs transformers, which is not installed (pip install transformers)") from None
    try:
        config = transformers.AutoConfig.for_model(**{**fields, **overrides})
    except (ValueError, KeyError, TypeError) as exc:
        raise TargetError(
            f"{where}: transformers {transformers.__version__} cannot read this config (model_type "
            f"{fields['model_type']!r}): {first_line(exc)}"
        ) from exc
    architecture = _architecture(transformers, fields.get("architectures"))
    if architecture is None:
        return type(config).__name__.replace("Config", "Model"), lambda: transformers.AutoModel.from_config(config)
    build = getattr(architecture, "_from_config", architecture)  # _from_config applies the config's dtype
    return architecture.__name__, lambda: build(config)


def _read(path: Path, where: str) -> dict[str, Any]:
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"{where}: cannot be read: {first_line(exc)}") from exc
    except json.JSONDecodeError as exc:
        raise TargetError(f"{where}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if not isinstance(fields, dict) or not isinstance(fields.get("model_type"), str):
        raise TargetError(f"{where}: not a Hugging Face model config (it has no \"model_type\")")
    return fields


def _architecture(transformers: Any, names: Any) -> type | None:
    """The first class the config's `architectures` names that transformers has (remote code is never run)."""
    for name in names if isinstance(names, list) else []:
        cls = getattr(transformers, str(name), None) if str(name).isidentifier() else None
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return None
