"""Audits from collected outputs of a generator (issue 24): ``target=outputs`` — a manifest or folder of outputs
with capture provenance, no model; model-free, screenshot-robust matching statistics whose per-work scores enter
the same ScoreTable, tests, gates and report; exhibits; ground truth (memorising generators and screenshots)."""
from audit.outputs.collection import OutputCollection, OutputRecord, OutputRefusal, read_outputs
from audit.outputs.statistics import (OUTPUT_DEFAULTS, STATISTICS, AlignedSSIM, AlignedTiledL2, EmbeddingMatch,
                                      OrbInliers, OutputStatistic, PHashMatch, SiftInliers, StyleMatch)
from audit.outputs.target import OutputsTarget

__all__ = ["OUTPUT_DEFAULTS", "STATISTICS", "AlignedSSIM", "AlignedTiledL2", "EmbeddingMatch", "OrbInliers",
           "OutputCollection", "OutputRecord", "OutputRefusal", "OutputStatistic", "OutputsTarget", "PHashMatch",
           "SiftInliers", "StyleMatch", "read_outputs"]
