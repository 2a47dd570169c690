"""Official split files, pipeline files and the dataset preparation commands."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from flowprep.datasets.pipeline import PipelineError, load_pipeline, prepare, rar_tool
from flowprep.datasets.splits import SplitError, match_videos, read_split

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"


@pytest.mark.parametrize("number,train,test", [(1, 9537, 3783), (2, 9586, 3734), (3, 9624, 3696)])
def test_ucf101_official_counts(shared_data: Path, number: int, train: int, test: int) -> None:
    split = read_split("ucf101", shared_data / "splits" / "ucf101", number)
    assert (len(split.train), len(split.test), len(split.classes)) == (train, test, 101)
    assert len({v.video for v in split.train} | {v.video for v in split.test}) == 13320
    assert split.train[0].video.startswith("ApplyEyeMakeup/v_ApplyEyeMakeup_g") and split.train[0].label == 0
    handstand = [v for v in split.test + split.train if "HandStandPushups" in v.video]
    assert handstand and {v.class_name for v in handstand} == {"HandstandPushups"}
    assert {v.label for v in handstand} == {split.classes.index("HandstandPushups")}


@pytest.mark.parametrize("number", [1, 2, 3])
def test_hmdb51_official_counts(shared_data: Path, number: int) -> None:
    split = read_split("hmdb51", shared_data / "splits" / "hmdb51", number)
    assert (len(split.train), len(split.test), len(split.classes)) == (3570, 1530, 51)
    assert split.classes[0] == "brush_hair"
    assert split.train[0].video.startswith("brush_hair/")
    assert all(v.class_name == split.classes[v.label] for v in split.train + split.test)


def test_crlf_and_trailing_spaces(shared_data: Path, tmp_path: Path) -> None:
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        text = (shared_data / "splits" / "ucf101" / name).read_text()
        (tmp_path / name).write_bytes(text.replace("\n", "  \r\n").encode())
    split = read_split("ucf101", tmp_path, 1)
    assert (len(split.train), len(split.test)) == (9537, 3783)
    assert split.classes[0] == "ApplyEyeMakeup"


def test_malformed_split_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "classInd.txt").write_text("1 Jump\n2 Run\n")
    (tmp_path / "trainlist01.txt").write_text("Jump/v_Jump_g01_c01.avi 1\nRun/v_Run_g01_c01.avi 7\n")
    (tmp_path / "testlist01.txt").write_text("Swim/v_Swim_g01_c01.avi\n")
    with pytest.raises(SplitError, match=r"trainlist01.txt:2: label '7' is not in 1..2"):
        read_split("ucf101", tmp_path, 1)
    (tmp_path / "trainlist01.txt").write_text("Jump/v_Jump_g01_c01.avi 1\n")
    with pytest.raises(SplitError, match=r"testlist01.txt:1: class folder 'Swim' is not in classInd.txt"):
        read_split("ucf101", tmp_path, 1)
    with pytest.raises(SplitError, match="trainlist02.txt: split file not found"):
        read_split("ucf101", tmp_path, 2)
    with pytest.raises(SplitError, match="no HMDB-51 split files"):
        read_split("hmdb51", tmp_path, 1)


def test_missing_videos_are_reported_with_count_and_names(shared_data: Path) -> None:
    split = read_split("ucf101", shared_data / "splits" / "ucf101", 1)
    available = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", "v_ApplyEyeMakeup_g01_c01"]  # second: flat folder
    matched = match_videos(split, available)
    assert [v.video for v in matched.split.train] == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01"]
    assert [v.video for v in matched.split.test] == ["v_ApplyEyeMakeup_g01_c01"]
    assert len(matched.missing) == 13318
    message = matched.report("out/ucf101")
    assert message.startswith("13318 of 13320 videos of ucf101 split 1 are not in out/ucf101 (first: ")


@pytest.mark.parametrize("name", ["ucf101", "hmdb51", "synthetic"])
def test_pipeline_files_load(name: str, tmp_path: Path) -> None:
    pipeline = load_pipeline(PIPELINES / f"{name}.yaml", tmp_path)
    assert pipeline.name == name and pipeline.flow.algo == "brox"
    assert pipeline.videos.is_relative_to(tmp_path) and pipeline.out.is_relative_to(tmp_path)
    with pytest.raises(PipelineError, match=str(pipeline.videos) if name != "synthetic" else "flowprep data"):
        pipeline.check_present()


def test_pipeline_data_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWOSTREAM_DATA", str(tmp_path))
    assert load_pipeline(PIPELINES / "ucf101.yaml").videos == tmp_path / "ucf101" / "UCF-101"
    monkeypatch.delenv("TWOSTREAM_DATA")
    assert load_pipeline(PIPELINES / "ucf101.yaml").videos == REPO / "data" / "ucf101" / "UCF-101"


@pytest.mark.parametrize("text,message", [
    ("name: x\nvideoz: a\n", "unknown field 'videoz'"),
    ("name: [x]\n", "field 'name' must be a str"),
    ("name: x\nvideos: v\nsplits: s\nsplit_format: ucf101\nout: o\n", "missing field 'source'"),
    ("name: x\nvideos: v\nsplits: s\nsplit_format: kinetics\nout: o\nsource: s\n", "split_format must be"),
    ("name: x\nvideos: v\nsplits: s\nsplit_format: ucf101\nout: o\nsource: s\nflow: {qualty: 3}\n",
     "unknown field 'flow.qualty'"),
    ("name: x\nvideos: v\nsplits: s\nsplit_format: ucf101\nout: o\nsource: s\nflow: {quality: 300}\n",
     "quality must be in 1..100"),
    ("name: x\n  bad: [\n", "not valid YAML"),
])
def test_bad_pipeline_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace("(", r"\(")) as info:
        load_pipeline(path)
    assert str(path) in str(info.value)


def run(*args: object, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, **(env or {})})


def test_extract_without_the_dataset_says_where_it_was_expected(tmp_path: Path) -> None:
    result = run(sys.executable, "-m", "flowprep", "extract", PIPELINES / "ucf101.yaml", "--data-root", tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "ucf101" / "UCF-101") in lines[0] and "UCF101.rar" in lines[0]


def test_make_flow_without_the_dataset_fails_in_one_line(tmp_path: Path) -> None:
    result = run("make", "--no-print-directory", "-s", "flow", "DATASET=hmdb51", env={"TWOSTREAM_DATA": str(tmp_path)})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "hmdb51" / "videos") in errors[0] and "hmdb51_org.rar" in errors[0]


def test_make_data_unpacks_zip_archives_and_names_missing_ones(shared_data: Path, tmp_path: Path) -> None:
    missing = run(sys.executable, "-m", "flowprep", "data", PIPELINES / "ucf101.yaml", "--data-root", tmp_path)
    assert missing.returncode == 2 and "UCF101.rar" in missing.stderr and "crcv.ucf.edu" in missing.stderr
    # a pipeline whose archives are zip files, made here from the official split files
    with zipfile.ZipFile(tmp_path / "splits.zip", "w") as zf:
        for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
            zf.write(shared_data / "splits" / "ucf101" / name, f"ucfTrainTestlist/{name}")
    with zipfile.ZipFile(tmp_path / "videos.zip", "w") as zf:
        zf.write(shared_data / "videos" / "ucf101" / "v_ApplyEyeMakeup_g01_c01.avi",
                 "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi")
    pipeline = tmp_path / "mini.yaml"
    pipeline.write_text("name: mini\nvideos: mini/videos\nsplits: mini/splits\nsplit_format: ucf101\n"
                        "split_numbers: [1]\nout: flow/mini\nsource: from the test\n"
                        "archives:\n  - {file: videos.zip, into: mini/videos}\n"
                        "  - {file: splits.zip, into: mini/splits}\nflow: {algo: dis, short_side: 128}\n")
    result = run(sys.executable, "-m", "flowprep", "data", pipeline, "--data-root", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mini/videos/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi").is_file()
    assert (tmp_path / "mini/splits/trainlist01.txt").is_file()
    extracted = run(sys.executable, "-m", "flowprep", "extract", pipeline, "--data-root", tmp_path, "--workers", "1")
    assert extracted.returncode == 0, extracted.stderr
    assert "13319 of 13320 videos of mini split 1 are not in" in extracted.stderr
    splits = run(sys.executable, "-m", "flowprep", "splits", pipeline, "--data-root", tmp_path)
    assert "mini split 1: 9537 train and 3783 test videos in 101 classes" in splits.stdout


def test_rar_without_an_unpacker_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("UCF101.rar", "UCF101TrainTestSplits-RecognitionTask.zip"):
        (tmp_path / name).write_bytes(b"Rar!\x1a\x07\x00")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert rar_tool() is None
    with pytest.raises(PipelineError, match="no RAR unpacker found; install one of unrar, 7z"):
        prepare(load_pipeline(PIPELINES / "ucf101.yaml", tmp_path), log=lambda line: None)


def test_built_in_pipeline_generates_the_dataset(tmp_path: Path) -> None:
    result = run(sys.executable, "-m", "flowprep", "data", PIPELINES / "synthetic.yaml", "--data-root", tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "synthetic" / "videos").rglob("*.avi"))) == 192
    splits = run(sys.executable, "-m", "flowprep", "splits", PIPELINES / "synthetic.yaml", "--data-root", tmp_path)
    assert splits.returncode == 0
    assert splits.stdout.startswith("synthetic split 1: 144 train and 48 test videos in 12 classes; all 192 videos")
