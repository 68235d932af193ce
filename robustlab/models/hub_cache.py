"""Where the Hugging Face hub keeps downloaded weights, read without importing timm or torch.

``--weights hub`` only reads this cache (robustlab never downloads model weights), and an empty cache
must fail in the time Python starts, not after the seconds timm takes to import.
"""

from __future__ import annotations

import os
from pathlib import Path

from robustlab.errors import WeightsUnavailableError

__all__ = ["hf_cache_dir", "require_cached_timm"]


def hf_cache_dir() -> Path:
    """``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (huggingface_hub's own order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def require_cached_timm(name: str) -> None:
    """Raise unless the cache holds some repository for timm model ``name`` (``arch`` or ``arch.tag``).

    A coarse check (any organisation, any tag): the exact file is looked up once timm says which repository.
    """
    arch = name.partition(".")[0]
    cache = hf_cache_dir()
    found = cache.is_dir() and any(
        entry.name.endswith(f"--{arch}") or f"--{arch}." in entry.name for entry in cache.glob("models--*")
    )
    if not found:
        raise WeightsUnavailableError(missing_hub_weights(name, cache))


def missing_hub_weights(name: str, cache: Path) -> str:
    """The one line that says where the weights were looked for and how to put them there."""
    return (
        f"timm:{name} --weights hub: no weights for {name} in the Hugging Face cache {cache} (robustlab never "
        f"downloads); on a connected machine run python -c \"import timm; timm.create_model('{name}', "
        f'pretrained=True)" and copy its cache here (or set HF_HUB_CACHE), or pass --weights PATH'
    )
