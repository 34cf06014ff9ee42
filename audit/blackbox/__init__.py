"""Black-box audits of a hosted generator (issue 15): ``target=http``, a replayable request log, black-box
statistics, verification from the log, and a local ground-truth server."""
from audit.blackbox.attacks import BBGenerate, BBImg2Img, BBVariation, BlackBoxAttack
from audit.blackbox.errors import ServiceError
from audit.blackbox.target import HttpTarget, LocalBackend

__all__ = ["BBGenerate", "BBImg2Img", "BBVariation", "BlackBoxAttack", "HttpTarget", "LocalBackend", "ServiceError"]
