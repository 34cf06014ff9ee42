"""Membership-inference attacks: one file each, one interface (higher score = more member-like)."""
from audit.attacks.base import Attack, AttackSetupError, Batch, NoiseSource
from audit.attacks.calibrated import Calibrated
from audit.attacks.clid import CLiD
from audit.attacks.gsa import GSA
from audit.attacks.loss import LossAttack
from audit.attacks.pfami import PFAMI
from audit.attacks.pia import PIA, PIAN
from audit.attacks.rediffuse import ReDiffuse, img2img
from audit.attacks.runner import score_evidence
from audit.attacks.secmi import SecMI
from audit.attacks.sima import SimA
from audit.attacks.wen import Wen

__all__ = [
    "GSA",
    "PFAMI",
    "PIA",
    "PIAN",
    "Attack",
    "AttackSetupError",
    "Batch",
    "CLiD",
    "Calibrated",
    "LossAttack",
    "NoiseSource",
    "ReDiffuse",
    "SecMI",
    "SimA",
    "Wen",
    "img2img",
    "score_evidence",
]
