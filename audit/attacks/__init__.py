"""Membership-inference attacks: one file each, one interface (higher score = more member-like)."""
from audit.attacks.base import Attack, AttackSetupError, Batch, NoiseSource
from audit.attacks.loss import LossAttack
from audit.attacks.pia import PIA, PIAN
from audit.attacks.runner import score_evidence

__all__ = ["PIA", "PIAN", "Attack", "AttackSetupError", "Batch", "LossAttack", "NoiseSource", "score_evidence"]
