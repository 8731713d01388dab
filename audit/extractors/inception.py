"""`inception`: the standard FID network — torch-fidelity's `FeatureExtractorInceptionV3` (the TF-FID port that
torchmetrics also builds), pool3 features (2048) — with weights from a file the user supplies.

Nothing is downloaded: torch-fidelity's constructor would fetch the weights from its release page, so it is built
with that fetch replaced by a placeholder, and the user's file is then loaded strictly. The file is either
torch-fidelity's own `weights-inception-2015-12-05-6726825d.pth` (a state dict of tensors, read with
`torch.load(weights_only=True)`: tensors only, nothing unpickled into objects) or a safetensors conversion of it.

Images are grey: each becomes uint8 (rounded ×255) and is repeated over the three colour channels; the network
resizes to 299×299 itself with TF1-compatible bilinear interpolation, as the reference FID implementation does.
FIDs are comparable to published ones only under these weights (the report carries their SHA-256) and the same
image preprocessing (resolution, quantisation: see Parmar et al.'s clean-fid).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from audit.checkpoints import file_sha256, load_safetensors_file, load_state_strict, looks_like_safetensors
from audit.data.cache import default_cache_dir
from audit.errors import AuditInputError
from audit.extractors.base import FeatureExtractor, VolumeParams

WEIGHTS_FILE_NAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE_NAME}"
FEATURE_LAYER = "2048"
_NO_WEIGHTS = object()  # what the patched download returns: "leave the random initialisation in place"


def default_weights_path(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "weights" / WEIGHTS_FILE_NAME


def _missing_weights_error(path: Path, given: bool) -> AuditInputError:
    where = "the file named by --weights" if given else "the default place"
    return AuditInputError(path, f"InceptionV3 FID weights not found ({where}); download {WEIGHTS_FILE_NAME} from "
                                 f"{WEIGHTS_URL} on a machine with internet access and put it at this path, or pass "
                                 f"--weights PATH (nothing is downloaded at run time)")


def build_inception_network(features: tuple[str, ...] = (FEATURE_LAYER,)) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 with random (PyTorch default) initialisation — no download."""
    from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

    class _Network(tf_inception.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            if state_dict is _NO_WEIGHTS:
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: _NO_WEIGHTS):
        network = _Network("inception-v3-compat", list(features))
    return network.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch.save file holding tensors only (weights_only=True)."""
    if looks_like_safetensors(path):
        return load_safetensors_file(path)
    from safetensors import SafetensorError  # torch.load hands a *.safetensors name to safetensors

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, SafetensorError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AuditInputError(path, f"not a state dict of tensors (safetensors, or torch.save of tensors only): "
                                    f"{first_line}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AuditInputError(path, "not a state dict of tensors")
    return dict(state)


class InceptionParams(VolumeParams):
    weights: str | None = None  # the weights file; None = <cache>/weights/weights-inception-2015-12-05-6726825d.pth


class InceptionExtractor(FeatureExtractor):
    name = "inception"
    version = "1"
    ndims = (2,)
    Params = InceptionParams

    def __init__(self, params: InceptionParams, runtime):
        super().__init__(params, runtime)
        given = params.weights is not None
        path = Path(params.weights) if given else default_weights_path(runtime.cache_dir)
        if not path.is_file():
            raise _missing_weights_error(path, given)
        self.weights_path = path
        self._sha256 = file_sha256(path)
        self.network = build_inception_network()
        load_state_strict(self.network, read_state_dict(path), path)
        self.network.to(runtime.device).eval()

    def weights_sha256(self) -> str:
        return self._sha256

    def describe(self) -> dict:
        return {**self.identity(), "weights_file": str(self.weights_path), "layer": f"pool3 ({FEATURE_LAYER})"}

    @staticmethod
    def to_uint8_rgb(images: np.ndarray) -> torch.Tensor:
        """(B, H, W) float [0, 1] → (B, 3, H, W) uint8, rounded (what writing an 8-bit PNG would store)."""
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()

    def extract_native(self, images: np.ndarray) -> np.ndarray:
        batch = self.to_uint8_rgb(images).to(self.runtime.device)
        with torch.inference_mode():
            (features,) = self.network(batch)
        return features.float().cpu().numpy()
