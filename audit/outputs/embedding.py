"""An optional local image encoder for ``out_embed`` (CLIP / DINOv2 / SSCD-style), loaded offline.

Only a local folder is accepted (nothing is ever downloaded: ``local_files_only=True``), weights only as
safetensors, never remote code. A CLIP model gives ``get_image_features``; any other vision model its pooled
output (or the first token). Runs on the GPU when one is available.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["LocalEmbedder"]


class LocalEmbedder:
    def __init__(self, folder: str, device: str | None = None):
        import torch
        from transformers import AutoConfig

        p = Path(str(folder))
        if not p.is_dir():
            raise ValueError(f"out_embed: {folder} is not a local folder (nothing is downloaded)")
        if not any(p.glob("*.safetensors")):
            raise ValueError(f"out_embed: {folder} holds no .safetensors weights (pickle weights are refused)")
        cfg = AutoConfig.from_pretrained(p, local_files_only=True, trust_remote_code=False)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        kw = dict(local_files_only=True, use_safetensors=True, trust_remote_code=False)
        if cfg.model_type == "clip":
            from transformers import CLIPModel

            self.model = CLIPModel.from_pretrained(p, **kw)
            self.clip = True
            size = int(cfg.vision_config.image_size)
        else:
            from transformers import AutoModel

            self.model = AutoModel.from_pretrained(p, **kw)
            self.clip = False
            size = int(getattr(cfg, "image_size", 224))
        self.model.eval().to(self.device)
        self.size = size
        try:
            from transformers import AutoImageProcessor

            self.processor = AutoImageProcessor.from_pretrained(p, local_files_only=True)
        except Exception:  # no preprocessor config: ImageNet normalisation at the model's size
            self.processor = None

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        if self.processor is not None:
            px = self.processor(images=[Image.fromarray(a) for a in images], return_tensors="pt")["pixel_values"]
        else:
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            px = torch.stack([torch.from_numpy(np.array(Image.fromarray(a).resize((self.size, self.size),
                                                                                     Image.Resampling.BICUBIC)))
                              .permute(2, 0, 1).float() / 255.0 for a in images])
            px = (px - mean) / std
        with torch.inference_mode():
            px = px.to(self.device)
            if self.clip:
                f = self.model.get_image_features(pixel_values=px)
                f = getattr(f, "pooler_output", f) if not torch.is_tensor(f) else f
            else:
                o = self.model(pixel_values=px)
                f = o.pooler_output if getattr(o, "pooler_output", None) is not None else o.last_hidden_state[:, 0]
            f = torch.nn.functional.normalize(f.float(), dim=-1)
        return f.cpu().numpy()
