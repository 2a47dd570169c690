"""The bookkeeping of a run that stores videos (``extract``, ``import``): its report, the failure
list (``OUT/failures.json``), and the start of a run on a store (settings checked, videos already
complete skipped)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import lmdb
import numpy as np

from flowprep import __version__
from flowprep.storage.atomic import write_json_atomic
from flowprep.storage.meta import VideoMeta
from flowprep.storage.settings import ExtractSettings, ImportSettings, check_settings
from flowprep.storage.store import FAILURES_FILE, ShardWriter, read_failures


@dataclass
class Failure:
    video: str
    path: str
    reason: str


@dataclass
class RunReport:
    total: int = 0
    stored: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    pairs: int = 0
    bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def count_stored(self, meta: VideoMeta) -> None:
        """Count one committed video."""
        self.stored += 1
        self.pairs += meta.num_flows
        self.bytes += meta.rgb_bytes + meta.flow_bytes


def begin_run(writer: ShardWriter, out: Path, settings: ExtractSettings | ImportSettings, videos: list[str],
              report: RunReport) -> dict[str, dict]:
    """Start a run on a store whose lock ``writer`` holds: its settings checked (written on the first
    run, rebuilt if lost), ``report.skipped`` set to the ``videos`` already complete, and the failure
    list read with their entries dropped. Returns the failure list (written back by the caller)."""
    note = check_settings(out, settings, writer.metas())
    if note:
        report.notes.append(note)
    failures = read_failures(out)
    complete = [video for video in videos if video in writer.complete]
    report.skipped = len(complete)
    for video in complete:
        failures.pop(video, None)
    return failures


def record_failure(out: Path, failures: dict[str, dict], report: RunReport, failure: Failure) -> None:
    """Add a failed video to the report and to ``OUT/failures.json`` (rewritten at once)."""
    report.failures.append(failure)
    failures[failure.video] = {"path": failure.path, "reason": failure.reason}
    write_json_atomic(out / FAILURES_FILE, failures)


def library_versions() -> dict:
    """The versions that made a video's records, kept in its metadata."""
    return {"flowprep": __version__, "opencv": cv2.__version__, "numpy": np.__version__,
            "lmdb": lmdb.__version__, "python": sys.version.split()[0]}


