"""The eager PyTorch model file a TorchServe user ships without this project (benchmark only).

BaseHandler imports this file, instantiates its one nn.Module class with no arguments and
loads the state dict (the .mar's serialized file) into it.
"""
import json
from pathlib import Path

from torch import nn

from models import ModelSpec, build_classifier


class StockModel(nn.Module):
    def __init__(self):
        super().__init__()
        spec = json.loads((Path(__file__).parent / "model_spec.json").read_text())
        self.net = build_classifier(ModelSpec.from_dict(spec))

    def forward(self, images):
        return self.net(images)["logits"]
