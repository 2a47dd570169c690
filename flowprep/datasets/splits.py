"""The official train/test splits of UCF-101 and HMDB-51, read from their original files.

UCF-101 (``ucfTrainTestlist/``): ``classInd.txt`` (``1 ApplyEyeMakeup``), ``trainlist0N.txt``
(``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``, 1-based label) and ``testlist0N.txt`` (path
only; the label comes from the folder). The folder ``HandstandPushups`` holds files named
``v_HandStandPushups_…``: classes are matched by folder, ignoring case.

HMDB-51 (``testTrainMulti_7030_splits/``): ``<class>_test_splitN.txt`` with lines
``name.avi N`` (1 train, 2 test, 0 unused), trailing spaces included.

Video ids are ``<class folder>/<file name without extension>``, the ids ``flowprep extract``
gives a dataset extracted from its root folder. Labels are 0-based indices into ``classes``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flowprep.errors import UserError

SPLIT_FORMATS = ("ucf101", "hmdb51")


class SplitError(UserError):
    """A split file that is missing or malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class SplitVideo:
    video: str  # "<class folder>/<stem>"
    label: int  # 0-based index into Split.classes
    class_name: str


@dataclass
class Split:
    dataset: str
    number: int
    classes: list[str]
    train: list[SplitVideo] = field(default_factory=list)
    test: list[SplitVideo] = field(default_factory=list)

    def describe(self) -> str:
        return (f"{self.dataset} split {self.number}: {len(self.train)} train and {len(self.test)} "
                f"test videos in {len(self.classes)} classes")


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise SplitError(f"{path}: split file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _stem_id(relpath: str) -> str:
    parts = relpath.replace("\\", "/").strip("/").split("/")
    if len(parts) < 2:
        raise ValueError("expected <class>/<file>")
    return f"{parts[-2]}/{Path(parts[-1]).stem}"


def read_ucf101(folder: str | Path, number: int) -> Split:
    """UCF-101 split ``number`` (1-3) from the folder holding classInd.txt and the lists."""
    folder = Path(folder)
    classes: list[str] = []
    for n, line in _lines(folder / "classInd.txt"):
        index, _, name = line.partition(" ")
        if not index.isdigit() or not name.strip() or int(index) != len(classes) + 1:
            raise SplitError(f"{folder / 'classInd.txt'}:{n}: expected '<index> <class>' in order, got {line!r}")
        classes.append(name.strip())
    by_name = {c.lower(): i for i, c in enumerate(classes)}
    split = Split("ucf101", number, classes)
    for kind in ("train", "test"):
        path = folder / f"{kind}list{number:02d}.txt"
        for n, line in _lines(path):
            fields = line.split()
            try:
                video = _stem_id(fields[0])
            except ValueError:
                raise SplitError(f"{path}:{n}: expected '<class>/<video>.avi', got {line!r}") from None
            folder_class = video.split("/")[0].lower()
            if folder_class not in by_name:
                raise SplitError(f"{path}:{n}: class folder {video.split('/')[0]!r} is not in classInd.txt")
            label = by_name[folder_class]
            if len(fields) > 1:
                if not fields[1].isdigit() or not 1 <= int(fields[1]) <= len(classes):
                    raise SplitError(f"{path}:{n}: label {fields[1]!r} is not in 1..{len(classes)}")
                if int(fields[1]) - 1 != label:
                    raise SplitError(f"{path}:{n}: label {fields[1]} is {classes[int(fields[1]) - 1]!r} "
                                     f"but the folder is {video.split('/')[0]!r}")
            getattr(split, kind).append(SplitVideo(video, label, classes[label]))
    return split


_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>[1-3])\.txt$")


def read_hmdb51(folder: str | Path, number: int) -> Split:
    """HMDB-51 split ``number`` (1-3) from the folder of ``<class>_test_splitN.txt`` files."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob(f"*_test_split{number}.txt") if _HMDB_FILE.match(p.name))
    if not files:
        raise SplitError(f"{folder}: no HMDB-51 split files (*_test_split{number}.txt)")
    classes = [_HMDB_FILE.match(p.name)["cls"] for p in files]
    split = Split("hmdb51", number, classes)
    for label, (cls, path) in enumerate(zip(classes, files, strict=True)):
        for n, line in _lines(path):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise SplitError(f"{path}:{n}: expected '<video>.avi 0|1|2', got {line!r}")
            entry = SplitVideo(f"{cls}/{Path(fields[0]).stem}", label, cls)
            if fields[1] == "1":
                split.train.append(entry)
            elif fields[1] == "2":
                split.test.append(entry)
    return split


def read_split(split_format: str, folder: str | Path, number: int) -> Split:
    """Split ``number`` of a dataset whose official split files are in ``folder``."""
    if number not in (1, 2, 3):
        raise SplitError(f"split number must be 1, 2 or 3, got {number}")
    if split_format == "ucf101":
        return read_ucf101(folder, number)
    if split_format == "hmdb51":
        return read_hmdb51(folder, number)
    raise SplitError(f"unknown split format {split_format!r}; expected one of {', '.join(SPLIT_FORMATS)}")


@dataclass
class Matched:
    """A split resolved against the videos actually available (a store or a folder)."""

    split: Split
    missing: list[SplitVideo]

    def report(self, where: str) -> str:
        wanted = len(self.split.train) + len(self.split.test) + len(self.missing)
        if not self.missing:
            return f"all {wanted} videos of {self.split.dataset} split {self.split.number} are in {where}"
        first = ", ".join(v.video for v in self.missing[:5])
        return (f"{len(self.missing)} of {wanted} videos of {self.split.dataset} split {self.split.number} "
                f"are not in {where} (first: {first})")


def match_videos(split: Split, available: Iterable[str]) -> Matched:
    """Map the split's ids onto ``available`` ids (exact, else by file stem, ignoring case) and
    list what is missing. The returned split holds the available ids and only present videos."""
    available = list(available)
    exact = {video: video for video in available}  # resolves to the store's own string: one copy kept
    by_stem: dict[str, str | None] = {}
    for video in available:
        stem = video.rsplit("/", 1)[-1].lower()
        by_stem[stem] = None if stem in by_stem else video  # None: ambiguous
    missing: list[SplitVideo] = []
    resolved = Split(split.dataset, split.number, split.classes)
    for kind in ("train", "test"):
        for entry in getattr(split, kind):
            video = exact.get(entry.video) or by_stem.get(entry.video.rsplit("/", 1)[-1].lower())
            if video is None:
                missing.append(entry)
            else:
                getattr(resolved, kind).append(SplitVideo(video, entry.label, entry.class_name))
    return Matched(resolved, missing)
