"""GSA: Gradient attack based on Subsampling and Aggregation (white box).

Pang, Wang, Kang, Huai & Zhang, "White-box Membership Inference Attacks against Diffusion Models",
arXiv 2308.06405 (2023), PoPETs 2025.

Training drives the gradient of the denoising loss towards zero on the training set, so a member's
loss gradient w.r.t. the model parameters is small; a non-member's is not. GSA turns that into a
compact feature vector per image:

1. *Subsampling*: K timesteps (the paper takes them evenly spaced through the chain; the authors'
   DDPM code uses every 100th step), one noise draw each.
2. *Aggregation*, two variants:
   - GSA₁ — average the K per-timestep losses, take one gradient, reduce it to one L2 norm per
     parameter group;
   - GSA₂ — one gradient per timestep, reduce each to per-group L2 norms, average the K norm vectors.
3. The paper trains an XGBoost classifier on these features from shadow models with known members.

Here :meth:`GSA.features` returns the ``[B, F]`` norm features for the analysis layer, which combines
features with a classifier trained with cross-fitting on known members / non-members (never on the
suspects). :meth:`GSA.score` is a classifier-free scalar for use as a single attack: the negated mean
over groups of the log gradient norm (the log makes each group's scale an additive constant, so the
largest layers do not drown the rest; members have smaller gradients, so higher = more member-like).

Implementation notes:
- gradients are taken per image (a loop), so a score does not depend on the other images in the
  batch; the K timesteps of one image go through the denoiser as one batch of K;
- the runner scores under ``torch.inference_mode()``; this attack re-enables autograd locally and
  clones its inputs (inference tensors cannot enter autograd). It uses ``torch.autograd.grad``, so
  nothing is written to the parameters' ``.grad``; parameters that had ``requires_grad=False`` get it
  only for the duration of the call;
- the loss is the per-element mean squared error of the ε-prediction (the standard training loss);
  noise draws use the loss attack's tags ``eps/t{t}/k0``, so the two see the same ε;
- gradients are taken in the target's dtype; in float16 small per-layer gradients can underflow, so
  run GSA with float32 or bfloat16 weights.

Timesteps: the paper spreads K timesteps evenly over the whole chain. On our benchmarks the small
ones carry the signal, so the default is K = 3 at t ∈ {50, 100, 200}. Measured here (AUC, 95% CI):
on ``memorized_ddpm`` the scalar score reaches 1.00 [0.99, 1.00]; on ``overfit_ddpm`` 0.71
[0.66, 0.75] with the defaults, 0.63 at t ∈ {100, 300, 500} and 0.67 with ten evenly spaced
timesteps. The features carry more than the scalar: a 5-fold cross-fitted logistic regression on the
log features reaches 0.86 on ``overfit_ddpm`` with the default timesteps — the paper's way of using
them (with XGBoost), which here belongs to the analysis layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from audit.attacks.base import Attack, AttackSetupError, Batch
from audit.targets.base import Target

GROUPINGS = ("parameter", "layer", "block")


def _group_name(param_name: str, group_by: str) -> str:
    if group_by == "parameter":
        return param_name
    parts = param_name.split(".")
    if group_by == "layer":  # the module owning the tensor: weight and bias together
        return ".".join(parts[:-1]) or param_name
    # "block": a top-level module, or one entry of a top-level ModuleList (down_blocks.0, up_blocks.2)
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


@dataclass
class GSA(Attack):
    """Per-group gradient norms of the denoising loss (features) and their negated mean log (score).

    Args:
        timesteps: the K subsampled timesteps (one seeded noise draw each).
        variant: 1 = GSA₁ (gradient of the mean loss), 2 = GSA₂ (mean of per-timestep gradient norms;
            K backward passes instead of one).
        group_by: how parameters are grouped into features: ``"parameter"`` (one norm per parameter
            tensor, as in the authors' code), ``"layer"`` (per module, weight and bias together) or
            ``"block"`` (per UNet block: conv_in, time_embedding, down_blocks.i, mid_block, up_blocks.i, …).
    """

    name = "gsa"
    paper = "Pang et al., PoPETs 2025 / arXiv 2308.06405 (GSA, white-box gradient attack)"
    access = "white"

    timesteps: list[int] = field(default_factory=lambda: [50, 100, 200])
    variant: int = 1
    group_by: str = "parameter"

    def __post_init__(self) -> None:
        if self.variant not in (1, 2):
            raise ValueError(f"gsa: variant must be 1 (GSA_1) or 2 (GSA_2), got {self.variant!r}")
        if self.group_by not in GROUPINGS:
            raise ValueError(f"gsa: group_by must be one of {GROUPINGS}, got {self.group_by!r}")
        if not self.timesteps:
            raise ValueError("gsa: needs at least one timestep")

    def check_target(self, target: Target) -> None:
        self._check_timesteps(target, self.timesteps)
        unet = target.denoiser
        if not isinstance(unet, torch.nn.Module) or not any(True for _ in unet.parameters()):
            raise AttackSetupError(
                "GSA needs white-box access: a target exposing its denoiser's parameters (target.denoiser)"
            )

    def evaluations_per_image(self) -> int:
        """K denoiser forward passes per image; each image also costs one backward pass (GSA₁) or K (GSA₂)."""
        return len(self.timesteps)

    def backward_passes_per_image(self) -> int:
        """GSA₁ back-propagates the mean loss over the K timesteps once; GSA₂ each timestep's loss."""
        return 1 if int(self.variant) == 1 else len(self.timesteps)

    # ------------------------------------------------------------------ features
    def groups(self, target: Target) -> list[str]:
        """Feature names, in the column order of :meth:`features`."""
        return list(dict.fromkeys(_group_name(n, self.group_by) for n, _ in target.denoiser.named_parameters()))

    def features(self, target: Target, batch: Batch) -> torch.Tensor:
        """``[B, F]`` gradient L2 norms, one column per group of :meth:`groups`."""
        unet = target.denoiser
        named = list(unet.named_parameters())
        params = [p for _, p in named]
        names = self.groups(target)
        index = {g: i for i, g in enumerate(names)}
        owner = torch.tensor([index[_group_name(n, self.group_by)] for n, _ in named])
        ts = torch.tensor([int(t) for t in self.timesteps], dtype=torch.long)
        k = len(ts)
        # the same seeded draws as the loss attack: [B, ...] per timestep
        noises = [batch.noise(f"eps/t{int(t)}/k0") for t in self.timesteps]
        rows = []
        flags = [p.requires_grad for p in params]
        with torch.inference_mode(False), torch.enable_grad():
            try:
                for p in params:
                    p.requires_grad_(True)
                for i in range(batch.x0.shape[0]):
                    x0 = batch.x0[i : i + 1].clone().expand(k, *batch.x0.shape[1:])
                    eps = torch.stack([n[i] for n in noises]).clone()
                    cond = None
                    if batch.cond is not None:
                        cond = batch.cond[i : i + 1].clone().expand(k, *batch.cond.shape[1:])
                    pred = target.predict_noise(target.add_noise(x0, eps, ts), ts, cond)
                    # the model's training loss (ε-MSE for VP, velocity MSE for flow), per timestep: [K]
                    losses = target.process.objective_error(pred, eps, ts).pow(2).flatten(1).mean(1)
                    if self.variant == 1:
                        rows.append(self._group_norms(losses.mean(), params, owner, len(names)))
                    else:
                        per_t = [self._group_norms(losses[j], params, owner, len(names), retain=j < k - 1)
                                 for j in range(k)]
                        rows.append(torch.stack(per_t).mean(0))
            finally:
                for p, f in zip(params, flags):
                    p.requires_grad_(f)
        return torch.stack(rows).to(batch.x0.device)

    @staticmethod
    def _group_norms(loss: torch.Tensor, params: list[torch.Tensor], owner: torch.Tensor, n_groups: int,
                     retain: bool = False) -> torch.Tensor:
        grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
        sq = torch.stack([
            g.detach().float().pow(2).sum() if g is not None else torch.zeros((), device=loss.device)
            for g in grads
        ]).cpu()
        return torch.zeros(n_groups, dtype=torch.float32).index_add_(0, owner, sq).sqrt()

    # ------------------------------------------------------------------ score
    def score(self, target: Target, batch: Batch) -> torch.Tensor:
        feats = self.features(target, batch)
        # A group with a zero norm takes no part in the loss (an unused parameter, the same for every
        # image); leave it out rather than letting log(0) decide the score.
        used = feats > 0
        logs = torch.where(used, feats.clamp_min(1e-30).log(), torch.zeros_like(feats))
        return -(logs.sum(1) / used.sum(1).clamp_min(1))
