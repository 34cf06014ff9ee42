"""Optional embedding similarity from a local image encoder (CLIP or DINOv2, transformers layout).

Pixel distances miss near-copies that are shifted, rescaled or recoloured; copy-detection work
(Somepalli et al., CVPR 2023) compares image embeddings instead. The encoder is loaded from a local
folder only (``local_files_only=True``), from safetensors unless pickle files are explicitly allowed,
and never with remote code: a folder whose config asks for custom code is refused.

Supported ``model_type`` values: ``clip`` / ``clip_vision_model`` (projected image embedding,
``CLIPVisionModelWithProjection``; falls back to the pooled output when the folder has no projection)
and ``dinov2`` / ``dinov2_with_registers`` (the CLS token after the final layer norm, as used for copy
detection). Other vision backbones loaded with ``AutoModel`` use ``pooler_output`` or the first token.

Preprocessing is done here in torch (no image-processor classes): resize the whole square image to the
encoder's ``image_size`` (bicubic, antialiased) and normalise with the mean/std from the folder's
``preprocessor_config.json`` or, without one, the model family's published values.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["ImageEmbedder"]

_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageEmbedder:
    """``embed(images)`` → L2-normalised embeddings ``[N, D]``; images float in [0, 1], ``[N, 3, H, W]``."""

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", allow_pickle: bool = False,
                 batch_size: int = 64) -> None:
        from transformers import AutoConfig

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"embedding model folder {folder} has no config.json (a local transformers folder is needed)")
        raw = json.loads((folder / "config.json").read_text())
        if raw.get("auto_map"):
            raise ValueError(f"{folder} asks for custom (remote) code via auto_map; refusing to run it")
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        self.model_type = str(config.model_type)
        self.path = str(folder)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        load = dict(local_files_only=True, use_safetensors=None if allow_pickle else True, trust_remote_code=False)
        self._output = "pooler"
        if self.model_type in ("clip", "clip_vision_model"):
            from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

            model, info = CLIPVisionModelWithProjection.from_pretrained(folder, output_loading_info=True, **load)
            if any(k.startswith("visual_projection") for k in info.get("missing_keys", ())):
                model = CLIPVisionModel.from_pretrained(folder, **load)
            else:
                self._output = "image_embeds"
            vision = config.vision_config if self.model_type == "clip" else config
            mean, std = _CLIP_MEAN, _CLIP_STD
        else:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(folder, **load)
            vision = getattr(config, "vision_config", None) or config
            mean, std = (_IMAGENET_MEAN, _IMAGENET_STD)
        size = getattr(vision, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (list, tuple)) else size)
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            p = json.loads(pre.read_text())
            mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.model = model.to(self.device).eval()

    def describe(self) -> dict:
        return {"path": self.path, "model_type": self.model_type, "image_size": self.image_size,
                "output": self._output, "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        if self._output == "image_embeds":
            return out.image_embeds
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        feats = []
        with torch.inference_mode():
            for i in range(0, images.shape[0], self.batch_size):
                x = images[i:i + self.batch_size].float().to(self.device)
                x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                                  align_corners=False).clamp(0, 1)
                x = (x - self.mean.to(self.device)) / self.std.to(self.device)
                feats.append(F.normalize(self._features(x).float(), dim=-1).cpu())
        return torch.cat(feats) if feats else torch.empty(0, 0)
