"""Write a diffusers model as a single-file checkpoint in the original (A1111 / ComfyUI) key layout.

Single-file checkpoints shared on civitai keep the layout of the code that trained them: the LDM UNet
(``model.diffusion_model.input_blocks.…``) and VAE (``first_stage_model.encoder.down.…``) for SD 1.x/2.x
and SDXL, the MMDiT (``model.diffusion_model.joint_blocks.…``, fused ``qkv``) for SD3. diffusers ships only
the other direction (``diffusers.loaders.single_file_utils``: ``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_sd3_transformer_checkpoint_to_diffusers``); the functions here are
their inverses, so a tiny model can be saved as such a file and read back by ``from_single_file`` (the
round trip is what the tests check, against the folder the model came from).

Text encoders are left out by default (``from_single_file`` then takes them from the config folder, as it
does for checkpoints that ship without them); :func:`to_single_file` can include the CLIP encoder of the
SD 1.x layout, whose original keys are the transformers keys under ``cond_stage_model.transformer.``.

Flux is not covered: diffusers 0.42's ``convert_flux_transformer_checkpoint_to_diffusers`` fixes the
transformer width at Flux.1's 3072 (``inner_dim = 3072``), so only a full-size Flux checkpoint converts.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["vae_to_ldm", "unet_to_ldm", "sd3_transformer_to_original", "to_single_file", "SINGLE_FILE_FAMILIES"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
#: families whose tiny model can be written as a single file that diffusers reads back
SINGLE_FILE_FAMILIES = ("sd", "sdxl", "sd3")

_RESNET_UNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))


def _rename_head(rest: str, table: tuple[tuple[str, str], ...]) -> str:
    head, _, tail = rest.partition(".")
    for new, old in table:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest if not tail else head + "." + tail


def vae_to_ldm(state: dict[str, torch.Tensor], n_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` state → the LDM VAE layout (inverse of ``convert_ldm_vae_checkpoint``)."""
    out: dict[str, torch.Tensor] = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out")
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key):
            new = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm" and value.dim() == 2:
                value = value[:, :, None, None]  # the LDM attention uses 1×1 convolutions
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            new = f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
            new = f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        out[new] = value
    return out


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` state → the LDM UNet layout (inverse of ``convert_ldm_unet_checkpoint``)."""
    per = int(config["layers_per_block"]) + 1  # input blocks per level (resnets + the downsampler); up blocks: resnets
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    direct = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in direct:
            new = f"{direct[module]}.{param}"
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            new = f"input_blocks.{int(m[1]) * per + int(m[2]) + 1}.0.{_rename_head(m[3], _RESNET_UNET)}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$", key):
            new = f"input_blocks.{int(m[1]) * per + int(m[2]) + 1}.1.{m[3]}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
            new = f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)$", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename_head(m[2], _RESNET_UNET)}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.+)$", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
            new = f"output_blocks.{int(m[1]) * per + int(m[2])}.0.{_rename_head(m[3], _RESNET_UNET)}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$", key):
            new = f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$", key):
            b = int(m[1])
            new = f"output_blocks.{b * per + per - 1}.{2 if up_has_attn[b] else 1}.conv.{m[2]}"
        else:
            raise ValueError(f"no LDM name for UNet parameter {key}")
        out[new] = value
    return out


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    a, b = w.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def sd3_transformer_to_original(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """diffusers ``SD3Transformer2DModel`` state → the MMDiT layout (inverse of
    ``convert_sd3_transformer_checkpoint_to_diffusers``: q, k, v fused into ``qkv``; the last context block's
    and the final layer's adaLN modulation stored as (shift, scale) instead of diffusers' (scale, shift))."""
    s = dict(state)
    out: dict[str, torch.Tensor] = {}
    fixed = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj": "x_embedder.proj",
             "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
             "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
             "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
             "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
             "context_embedder": "context_embedder", "proj_out": "final_layer.linear"}
    for i in range(num_layers):
        b, o = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for p in ("weight", "bias"):
            for src, dst in ((("to_q", "to_k", "to_v"), "x_block.attn.qkv"),
                             (("add_q_proj", "add_k_proj", "add_v_proj"), "context_block.attn.qkv"),
                             (("attn2.to_q", "attn2.to_k", "attn2.to_v"), "x_block.attn2.qkv")):
                names = [b + (n if n.startswith("attn2") else "attn." + n) + "." + p for n in src]
                if all(n in s for n in names):
                    out[f"{o}{dst}.{p}"] = torch.cat([s.pop(n) for n in names])
            last_ctx = b + "norm1_context.linear." + p
            if i == num_layers - 1 and last_ctx in s:
                out[f"{o}context_block.adaLN_modulation.1.{p}"] = _swap_halves(s.pop(last_ctx))
        rename = {"attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
                  "attn2.to_out.0": "x_block.attn2.proj", "attn.norm_q": "x_block.attn.ln_q",
                  "attn.norm_k": "x_block.attn.ln_k", "attn.norm_added_q": "context_block.attn.ln_q",
                  "attn.norm_added_k": "context_block.attn.ln_k", "attn2.norm_q": "x_block.attn2.ln_q",
                  "attn2.norm_k": "x_block.attn2.ln_k", "norm1.linear": "x_block.adaLN_modulation.1",
                  "norm1_context.linear": "context_block.adaLN_modulation.1", "ff.net.0.proj": "x_block.mlp.fc1",
                  "ff.net.2": "x_block.mlp.fc2", "ff_context.net.0.proj": "context_block.mlp.fc1",
                  "ff_context.net.2": "context_block.mlp.fc2"}
        for key in [k for k in s if k.startswith(b)]:
            module, _, p = key[len(b):].rpartition(".")
            if module not in rename:
                raise ValueError(f"no MMDiT name for SD3 parameter {key}")
            out[f"{o}{rename[module]}.{p}"] = s.pop(key)
    for p in ("weight", "bias"):
        if f"norm_out.linear.{p}" in s:
            out[f"final_layer.adaLN_modulation.1.{p}"] = _swap_halves(s.pop(f"norm_out.linear.{p}"))
    for key in list(s):
        module, _, p = key.rpartition(".")
        if key in fixed:  # pos_embed.pos_embed has no .weight suffix
            out[fixed[key]] = s.pop(key)
        elif module in fixed:
            out[f"{fixed[module]}.{p}"] = s.pop(key)
    if s:
        raise ValueError(f"no MMDiT name for SD3 parameters {sorted(s)[:3]}")
    return out


def to_single_file(model_dir: str | os.PathLike, family: str, out_file: str | os.PathLike, *,
                   denoiser_only: bool = False, with_text_encoder: bool = False) -> Path:
    """Save the diffusers folder ``model_dir`` (family ``sd``, ``sdxl`` or ``sd3``) as one ``.safetensors`` file
    in the original key layout: denoiser under ``model.diffusion_model.``, VAE under ``first_stage_model.``
    (left out with ``denoiser_only``, the usual form of SD3 / Flux releases), and, with ``with_text_encoder``
    (sd only), the CLIP text encoder under ``cond_stage_model.transformer.``."""
    import diffusers
    from safetensors.torch import save_file

    if family not in SINGLE_FILE_FAMILIES:
        raise ValueError(f"no single-file writer for {family!r}; choose from {SINGLE_FILE_FAMILIES}")
    model_dir = Path(model_dir)
    load = {"local_files_only": True, "use_safetensors": True}
    if family == "sd3":
        net = diffusers.SD3Transformer2DModel.from_pretrained(str(model_dir), subfolder="transformer", **load)
        den = sd3_transformer_to_original(net.state_dict(), int(net.config.num_layers))
    else:
        net = diffusers.UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet", **load)
        den = unet_to_ldm(net.state_dict(), dict(net.config))
    out = {UNET_PREFIX + k: v for k, v in den.items()}
    if not denoiser_only:
        vae = diffusers.AutoencoderKL.from_pretrained(str(model_dir), subfolder="vae", **load)
        ldm_vae = vae_to_ldm(vae.state_dict(), len(vae.config.down_block_types))
        out.update({VAE_PREFIX + k: v for k, v in ldm_vae.items()})
    if with_text_encoder:
        from transformers import CLIPTextModel

        if family != "sd":  # SDXL's second encoder is OpenCLIP-layout, SD3's are under text_encoders.*
            raise ValueError("with_text_encoder is written for the sd layout only")
        te = CLIPTextModel.from_pretrained(str(model_dir), subfolder="text_encoder", local_files_only=True)
        prefix = "cond_stage_model.transformer."
        out.update({prefix + k: v for k, v in te.state_dict().items()})
    path = Path(out_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in out.items()}, str(path))
    return path
