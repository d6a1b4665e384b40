"""hub.py
======

``sonoshot model pull``: gather BiomedCLIP's open_clip files and the BiomedBERT text config and
tokenizer into one self-contained folder, the layout :class:`~sonoshot.model.backbones.OpenClip`
loads offline. Files come through huggingface_hub (its cache first; the network unless
``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from huggingface_hub import snapshot_download

from sonoshot.model.backbones import BIOMEDBERT_HUB_ID, BIOMEDCLIP_HUB_ID

CLIP_PATTERNS = ["open_clip_config.json", "open_clip_pytorch_model.bin",
                 "open_clip_model.safetensors"]
TEXT_PATTERNS = ["config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"]


def pull_biomedclip(out: Path) -> list[Path]:
    """Fetch the files into ``out`` and return the paths written.

    Raises
    ------
    OSError
        If a repository cannot be reached and is not in the cache (huggingface_hub's errors
        derive from it), or ``out`` cannot be written.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for repo, patterns in ((BIOMEDCLIP_HUB_ID, CLIP_PATTERNS), (BIOMEDBERT_HUB_ID, TEXT_PATTERNS)):
        snapshot = Path(snapshot_download(repo, allow_patterns=patterns))
        for name in patterns:
            if (snapshot / name).is_file():
                written.append(Path(shutil.copy2(snapshot / name, out / name)))
    return written
