"""Utility classifiers by name: 1-channel networks producing class logits, built fresh for every training run.

- ``timm`` (2D): any timm backbone, ``pretrained=False`` (nothing is downloaded), from scratch or with weights
  from a LOCAL safetensors file (ImageNet RGB stems summed to one channel, the checkpoint's head dropped; a new
  head for the target's classes). Default ``resnet10t``: a real ResNet small enough for a CPU run in minutes.
- ``monai_resnet`` (3D): MONAI's ResNet with basic blocks, narrow and shallow by default (one block per stage,
  16–128 channels, a stride-2 3³ stem) — about 0.9 M parameters, sized for 32³ volumes on a CPU.

`auto` picks ``timm`` for 2D and ``monai_resnet`` for 3D images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.errors import AuditInputError
from audit.registry import Params, Registry, Runtime

if TYPE_CHECKING:  # torch is imported only when a network is built: `audit --help` lists names without it
    from torch import nn


class TimmClassifier:
    ndim = 2

    class Params(Params):
        model: str = "resnet10t"
        weights: str | None = None  # a local safetensors file of that backbone; None: from scratch
        drop_rate: float = 0.0

    def __init__(self, params: Params, runtime: Runtime | None = None):
        self.params = params
        self._weights_sha256 = None
        if params.weights is not None:
            from audit.checkpoints import file_sha256, refuse_pickle

            path = Path(params.weights)
            if not path.is_file():
                raise AuditInputError(path, f"weights for timm backbone '{params.model}' not found; put a "
                                            "safetensors file of that model there (nothing is downloaded)")
            refuse_pickle(path)
            self._weights_sha256 = file_sha256(path)

    def build(self, n_classes: int) -> "nn.Module":
        import timm

        try:
            if self.params.weights is None:
                return timm.create_model(self.params.model, pretrained=False, in_chans=1, num_classes=n_classes,
                                         drop_rate=self.params.drop_rate)
            model = timm.create_model(self.params.model, pretrained=False, in_chans=1, num_classes=0,
                                      drop_rate=self.params.drop_rate)
        except (RuntimeError, ValueError) as err:  # unknown model name
            raise AuditInputError(None, f"classifier 'timm': unknown timm model '{self.params.model}' "
                                        f"({err})") from None
        from audit.checkpoints import load_safetensors_file, load_state_strict
        from audit.features import adapt_state_to_model

        state = adapt_state_to_model(load_safetensors_file(self.params.weights), model)
        load_state_strict(model, state, self.params.weights)
        model.reset_classifier(n_classes)
        return model

    def describe(self) -> dict[str, Any]:
        return {"name": "timm", "ndim": 2, **self.params.model_dump(mode="json"),
                "weights_sha256": self._weights_sha256}


class MonaiResNet3D:
    ndim = 3

    class Params(Params):
        layers: tuple[int, ...] = (1, 1, 1, 1)
        widths: tuple[int, ...] = (16, 32, 64, 128)

    def __init__(self, params: Params, runtime: Runtime | None = None):
        if len(params.layers) != len(params.widths):
            raise AuditInputError(None, "classifier 'monai_resnet': layers and widths need the same length")
        self.params = params

    def build(self, n_classes: int) -> "nn.Module":
        from monai.networks.nets import ResNet

        return ResNet(block="basic", layers=list(self.params.layers), block_inplanes=list(self.params.widths),
                      spatial_dims=3, n_input_channels=1, conv1_t_size=3, conv1_t_stride=2, no_max_pool=True,
                      num_classes=n_classes)

    def describe(self) -> dict[str, Any]:
        return {"name": "monai_resnet", "ndim": 3, **self.params.model_dump(mode="json")}


CLASSIFIERS: Registry = Registry("classifier")
CLASSIFIERS.register("timm", TimmClassifier, "2D timm backbone (default resnet10t), scratch or local safetensors")
CLASSIFIERS.register("monai_resnet", MonaiResNet3D, "3D MONAI ResNet (basic blocks, narrow)")
DEFAULT_BY_NDIM = {2: "timm", 3: "monai_resnet"}


def make_classifier(name: str, options: dict[str, Any] | None, ndim: int):
    """A classifier for `ndim`-D images; `auto` picks the default of that dimensionality."""
    if name == "auto":
        name = DEFAULT_BY_NDIM.get(ndim)
        if name is None:
            raise AuditInputError(None, f"no utility classifier for {ndim}D images")
    classifier = CLASSIFIERS.create(name, options or {})
    if classifier.ndim != ndim:
        raise AuditInputError(None, f"classifier '{name}' takes {classifier.ndim}D images; the data are {ndim}D")
    return classifier
