"""The stock TorchServe path (benchmark baseline): BaseHandler + eager PyTorch, PIL decoding,
softmax output. Uses as many torch threads as our handler uses onnxruntime threads."""
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler


class StockHandler(BaseHandler):
    def initialize(self, context):
        threads = (context.model_yaml_config or {}).get("handler", {}).get("threads", 1)
        torch.set_num_threads(int(threads))
        super().initialize(context)
        spec = json.loads((Path(context.system_properties["model_dir"]) / "model_spec.json").read_text())
        self.mode = "L" if spec["in_channels"] == 1 else "RGB"

    def preprocess(self, data):
        images = []
        for row in data:
            body = row.get("body") or row.get("data")
            image = np.asarray(Image.open(io.BytesIO(body)).convert(self.mode), np.float32) / 255
            images.append(torch.from_numpy(image[None] if image.ndim == 2 else image.transpose(2, 0, 1)))
        return torch.stack(images)

    def postprocess(self, logits):
        probabilities = torch.softmax(logits, dim=1)
        best = probabilities.max(dim=1)
        return [{"class": int(k), "probability": float(p)}
                for k, p in zip(best.indices.tolist(), best.values.tolist())]
