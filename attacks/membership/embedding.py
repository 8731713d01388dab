"""The re-identification embedding for the `dcr_embed` attack, from the re-id attacker (attacks.reid.attacker),
built (or taken from the artefact cache) on the real training images. Injected into the attacks as a plain
function images → (N, d) L2-normalised rows, so that membership code and tests do not depend on how the
attacker is made.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from audit.errors import AuditInputError

Embedder = Callable[[np.ndarray], np.ndarray]


def reid_embedder(train_dataset, runtime, cache=None, options: dict | None = None) -> tuple[Embedder | None, str]:
    """(embedder, "") or (None, why not). The attacker trains on `train_dataset` with patient ids as labels."""
    try:
        from attacks.reid.attacker import AttackerParams, cached_attacker
    except ImportError as err:
        return None, f"the re-identification attacker is not available ({err})"
    from audit.artifacts import ArtifactCache

    try:
        attacker = cached_attacker(train_dataset, AttackerParams(**(options or {})), runtime,
                                   cache or ArtifactCache(runtime.cache_dir))
    except AuditInputError as err:
        return None, f"the re-identification attacker cannot be trained here: {err}"
    return attacker.embed, ""
