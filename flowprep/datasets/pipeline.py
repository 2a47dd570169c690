"""Pipeline files (``pipelines/<dataset>.yaml``): where a dataset lives and how its flow is made.

A pipeline names, relative to a data root, the folder of videos, the folder of official split files
and the output store, says where the dataset comes from, which archives unpack into it, and the
flow settings. The data root is ``--data-root``, else ``$TWOSTREAM_DATA``, else ``data/`` beside
the ``pipelines/`` folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from flowprep.datasets.splits import SPLIT_FORMATS
from flowprep.errors import UserError
from flowprep.storage.settings import ExtractSettings

DATA_ENV = "TWOSTREAM_DATA"
logger = logging.getLogger("flowprep")


class PipelineError(UserError):
    """A pipeline file that is invalid, or a dataset that is not where the pipeline expects it."""


@dataclass(frozen=True)
class Archive:
    file: str  # archive name, looked for in the data root
    into: str  # folder (relative to the data root) it unpacks into
    inner_rars: bool = False  # HMDB-51: the archive holds one .rar per class, unpacked in turn


@dataclass
class Pipeline:
    name: str
    path: Path
    data_root: Path
    videos: Path
    splits: Path
    split_format: str
    split_numbers: list[int]
    out: Path
    source: str
    flow: ExtractSettings
    archives: list[Archive] = field(default_factory=list)
    generator: str | None = None  # "synthetic": the built-in dataset, made by `flowprep synth`

    def missing_message(self) -> str:
        """One line: what is missing, where it was expected and where the dataset comes from."""
        what = self.videos if not self.videos.is_dir() else self.splits
        if self.generator:
            return (f"{self.name}: {what} not found; make it with `flowprep data {self.path}` "
                    f"(or `make data DATASET={self.name}`)")
        return f"{self.name}: {what} not found. {self.source.strip()}"

    def check_present(self) -> None:
        if not self.videos.is_dir() or not self.splits.is_dir():
            raise PipelineError(self.missing_message())


_TOP_KEYS = {"name": str, "description": str, "videos": str, "splits": str, "split_format": str,
             "split_numbers": list, "out": str, "source": str, "flow": dict, "archives": list,
             "generator": str}
_REQUIRED = ("name", "videos", "splits", "split_format", "out", "source")


def default_data_root(pipeline_path: Path) -> Path:
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return pipeline_path.resolve().parent.parent / "data"


def load_pipeline(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Pipeline:
    """Read and validate a pipeline file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: pipeline file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of settings")
    for key, value in raw.items():
        if key not in _TOP_KEYS:
            raise PipelineError(f"{path}: unknown field {key!r} (known: {', '.join(sorted(_TOP_KEYS))})")
        if not isinstance(value, _TOP_KEYS[key]):
            raise PipelineError(f"{path}: field {key!r} must be a {_TOP_KEYS[key].__name__}, "
                                f"got {type(value).__name__}")
    for key in _REQUIRED:
        if key not in raw:
            raise PipelineError(f"{path}: missing field {key!r}")
    if raw["split_format"] not in SPLIT_FORMATS:
        raise PipelineError(f"{path}: split_format must be one of {', '.join(SPLIT_FORMATS)}")
    numbers = raw.get("split_numbers", [1, 2, 3])
    if not numbers or any(n not in (1, 2, 3) for n in numbers):
        raise PipelineError(f"{path}: split_numbers must list 1, 2 and/or 3")
    known = {f.name for f in fields(ExtractSettings)}
    flow = dict(raw.get("flow", {}))
    for key in flow:
        if key not in known:
            raise PipelineError(f"{path}: unknown field 'flow.{key}' (known: {', '.join(sorted(known))})")
    try:
        settings = ExtractSettings(**flow)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{path}: field 'flow': {exc}") from None
    archives = []
    for i, item in enumerate(raw.get("archives", [])):
        keys = set(item) if isinstance(item, dict) else set()
        if not {"file", "into"} <= keys or keys - {"file", "into", "inner_rars"}:
            raise PipelineError(f"{path}: archives[{i}] needs 'file' and 'into' (and optionally 'inner_rars')")
        archives.append(Archive(str(item["file"]), str(item["into"]), bool(item.get("inner_rars", False))))
    root = Path(data_root) if data_root else default_data_root(path)
    return Pipeline(
        name=raw["name"], path=path, data_root=root, videos=root / raw["videos"], splits=root / raw["splits"],
        split_format=raw["split_format"], split_numbers=list(numbers), out=root / raw["out"],
        source=raw["source"], flow=settings, archives=archives, generator=raw.get("generator"),
    )


def is_pipeline_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


RAR_TOOLS = (  # command to unpack ARCHIVE into DEST, in order of preference
    ("unrar", ["unrar", "x", "-o+", "-idq", "{archive}", "{dest}/"]),
    ("7z", ["7z", "x", "-y", "-bd", "-o{dest}", "{archive}"]),
    ("unar", ["unar", "-q", "-f", "-o", "{dest}", "{archive}"]),
    ("bsdtar", ["bsdtar", "-xf", "{archive}", "-C", "{dest}"]),
)


def rar_tool() -> tuple[str, list[str]] | None:
    """The first RAR unpacker on PATH, or None."""
    for name, command in RAR_TOOLS:
        if shutil.which(name):
            return name, command
    return None


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a .zip (Python's zipfile) or .rar (unrar, 7z, unar or bsdtar) archive into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix.lower() == ".zip":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
        return
    tool = rar_tool()
    if tool is None:
        raise PipelineError(
            f"{archive}: no RAR unpacker found; install one of unrar, 7z (Debian/Ubuntu: p7zip-full), "
            "unar or bsdtar (libarchive-tools), e.g. `sudo apt-get install unar`")
    command = [part.format(archive=archive, dest=dest) for part in tool[1]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise PipelineError(f"{archive}: {tool[0]} failed: {detail[-1] if detail else result.returncode}")


def _content_root(folder: Path) -> Path:
    """Archives often hold one top folder (UCF-101/, ucfTrainTestlist/): that folder, else ``folder``."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def prepare(pipeline: Pipeline, log: Callable[[str], None] | None = None) -> None:
    """Make the dataset of ``pipeline`` present: generate it (built-in) or unpack its archives from
    the data root. Raises PipelineError naming what to download and where to put it."""
    log = log or logger.info
    if pipeline.videos.is_dir() and pipeline.splits.is_dir():
        log(f"{pipeline.name}: already present ({pipeline.videos})")
        return
    if pipeline.generator == "synthetic":
        from flowprep.datasets.synthetic import write_dataset

        root = pipeline.videos.parent
        log(f"{pipeline.name}: writing the built-in dataset to {root}")
        write_dataset(root)
        return
    wanted = [(a, pipeline.data_root / a.file) for a in pipeline.archives]
    absent = [str(p) for _, p in wanted if not p.is_file()]
    if absent:
        raise PipelineError(f"{pipeline.name}: {', '.join(absent)} not found. {pipeline.source.strip()}")
    for archive, path in wanted:
        target = pipeline.data_root / archive.into
        staging = target.with_name(f".{target.name}.unpacking")
        if target.is_dir():
            log(f"{path.name}: {target} exists, skipped")
            continue
        if staging.exists():
            shutil.rmtree(staging)
        log(f"{path.name}: unpacking into {target}")
        unpack(path, staging)
        content = _content_root(staging)
        if archive.inner_rars:
            for rar in sorted(content.glob("*.rar")):
                unpack(rar, content)
                rar.unlink()
        content.rename(target)
        if staging.exists():
            shutil.rmtree(staging)
