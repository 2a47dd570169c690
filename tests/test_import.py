"""flowprep import / export: the four file layouts of other tools, byte for byte, counts reconciled."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import write_config, write_video

from flowprep.exporter import run_export
from flowprep.importer import run_import
from flowprep.layouts import LAYOUTS, Layout, detect_layout, find_video_folders
from flowprep.storage.codec import linear_range, unpack_flow_record
from flowprep.storage.settings import ImportSettings
from flowprep.storage.store import FlowStore, read_failures
from trainer.config import load_config
from trainer.data import DataError
from trainer.fit import fit

REPO = Path(__file__).resolve().parents[1]
BOUND = 20.0


def flowprep(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowprep", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def tool_levels(component: np.ndarray, bound: float = BOUND, floor: bool = False) -> np.ndarray:
    """What TSN's dense_flow, denseflow and gpu_flow write: round(255·(d + B)/2B), clipped (0 px at level
    127.5); ``floor``: mmaction2's flow_extraction.py, which clips then truncates (0 px at level 127)."""
    levels = 255.0 * (np.clip(component, -bound, bound) + bound) / (2 * bound)
    return (np.floor(levels) if floor else np.clip(np.rint(levels), 0, 255)).astype(np.uint8)


def write_frames_and_flow(video: Path, layout: Layout, rgb_dir: Path, x_dir: Path, y_dir: Path,
                          flows: int | None = None, colour_flow: bool = False) -> None:
    """Decode a real video, compute DIS flow and write both as ``layout``'s JPEG files, as the other tools do."""
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    for folder in {rgb_dir, x_dir, y_dir}:
        folder.mkdir(parents=True, exist_ok=True)
    # TSN's dense_flow never writes frame 0: img_k is frame k and flow_x_k the flow from frame k-1 to k
    skip = 1 if layout.flow_ends_at_frame else 0
    for t, frame in enumerate(frames[skip:]):
        cv2.imwrite(str(rgb_dir / layout.file_name("rgb", t)), frame)
    count = len(frames) - 1 if flows is None else flows
    for t in range(count):
        a, b = (cv2.cvtColor(frames[min(i, len(frames) - 1)], cv2.COLOR_BGR2GRAY) for i in (t, t + 1))
        flow = dis.calc(a, b, None)
        for c, folder, role in ((0, x_dir, "x"), (1, y_dir, "y")):
            levels = tool_levels(flow[..., c], floor=layout.zero_level == 127)
            if colour_flow:
                levels = cv2.cvtColor(levels, cv2.COLOR_GRAY2BGR)
            cv2.imwrite(str(folder / layout.file_name(role, t)), levels)


def build_tree(root: Path, layout: Layout, videos: dict[str, Path]) -> tuple[Path, Path | None]:
    """{id: video file} as ``layout``'s tree(s) under ``root``; (flow tree, RGB tree or None)."""
    for video, path in videos.items():
        if layout.uv:
            write_frames_and_flow(path, layout, root / "rgb" / video, root / "flow" / "u" / video,
                                  root / "flow" / "v" / video)
        else:
            write_frames_and_flow(path, layout, *[root / video] * 3)
    return (root / "flow", root / "rgb") if layout.uv else (root, None)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {"walk/clip_a": write_video(folder / "a.avi", frames=7, seed=1),
            "walk/clip_b": write_video(folder / "b.avi", frames=6, seed=2, speed=(-1.5, 0.5)),
            "run/clip_c": write_video(folder / "c.avi", frames=5, seed=3, speed=(3.0, -1.0))}


def tree_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def store_records(path: Path) -> dict[tuple[str, str, int], bytes]:
    store = FlowStore(path)
    out = {}
    for video in store.videos():
        meta = store.meta(video)
        for kind, count in (("rgb", meta["num_frames"]), ("flow", meta["num_flows"])):
            for t, record in enumerate(store.records(video, kind, range(count))):
                out[video, kind, t] = bytes(record)
    return out


def do_import(source: Path, out: Path, rgb: Path | None = None, layout: str = "auto", streams=None,
              **options) -> object:
    chosen = LAYOUTS[layout] if layout != "auto" else detect_layout(source, rgb)
    found, videos = find_video_folders(source, chosen, rgb, streams)
    settings = ImportSettings(chosen.name, options.pop("bound", BOUND), options.pop("zero_level", chosen.zero_level),
                              streams=found)
    return run_import(source, out, chosen, settings, rgb, videos=videos, **options)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_imports_exports_and_imports_again_byte_for_byte(
        name: str, clips: dict[str, Path], tmp_path: Path) -> None:
    layout = LAYOUTS[name]
    source, rgb = build_tree(tmp_path / "tree", layout, clips)
    assert detect_layout(source, rgb).name == name
    report = do_import(source, tmp_path / "store", rgb, readers=2)
    drop = 1 if layout.flow_ends_at_frame else 0  # TSN: no frame 0 in the tree, and field 1 starts there
    assert report.stored == 3 and not report.failures and report.pairs == 6 + 5 + 4 - 3 * drop
    store = FlowStore(tmp_path / "store")
    assert store.videos() == sorted(clips)
    meta = store.meta("walk/clip_a")
    assert (meta["num_frames"], meta["num_flows"], meta["width"], meta["height"]) == (7 - drop, 6 - drop, 160, 120)
    # the records are the files' bytes: RGB as they are, flow as a header around the dx and dy files
    rgb_dir = (rgb if layout.uv else source) / "walk/clip_a"
    x_dir = source / ("u" if layout.uv else "") / "walk/clip_a"
    y_dir = source / ("v" if layout.uv else "") / "walk/clip_a"
    assert store.records("walk/clip_a", "rgb", [3])[0] == (rgb_dir / layout.file_name("rgb", 3)).read_bytes()
    _, (lo, hi), _, jx, jy = unpack_flow_record(store.records("walk/clip_a", "flow", [2])[0])
    assert (lo, hi) == pytest.approx(linear_range(BOUND, layout.zero_level))
    assert bytes(jx) == (x_dir / layout.file_name("x", 2 + drop)).read_bytes()  # from stored frame 2 to 3
    assert bytes(jy) == (y_dir / layout.file_name("y", 2 + drop)).read_bytes()
    # pixels: the other tools' mapping, (level − zero level)·2B/255
    levels = cv2.imread(str(x_dir / layout.file_name("x", 2 + drop)), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_allclose(store.flow("walk/clip_a", 2)[..., 0],
                               (levels - layout.zero_level) * (2 * BOUND / 255), atol=1e-5)
    assert flowprep("verify", tmp_path / "store").returncode == 0

    report = run_export(tmp_path / "store", tmp_path / "exported", layout)
    assert report.exported == 3 and report.reencoded == 0
    exported_flow = tmp_path / "exported"
    exported_rgb = exported_flow / "rgb" if layout.uv else None
    assert not (exported_flow / ".lock").exists()
    if layout.uv:
        assert tree_files(exported_flow / "u") == tree_files(source / "u")
        assert tree_files(exported_flow / "v") == tree_files(source / "v")
        assert tree_files(exported_rgb) == tree_files(rgb)
    elif drop:  # as dense_flow run on the stored frames: the first is not written, img_k ends flow_k
        shifted = {re.sub(r"\d+(?=\.jpg$)", lambda m: f"{int(m.group()) - 1:05d}", name): data
                   for name, data in tree_files(source).items() if not re.search(r"_00001\.jpg$", name)}
        assert tree_files(exported_flow) == shifted
    else:
        assert tree_files(exported_flow) == tree_files(source)
    do_import(exported_flow, tmp_path / "again")  # uv: the frames are found in OUT/rgb
    again, first = store_records(tmp_path / "again"), store_records(tmp_path / "store")
    assert again == ({(v, k, t - 1): r for (v, k, t), r in first.items() if t > 0} if drop else first)


def test_reference_sample_of_another_tool(shared_data: Path, tmp_path: Path) -> None:
    """The real mmaction2 sample (TV-L1, ±20): 0 px sits at level 127.5, and the store reads it back."""
    source = shared_data / "flow-jpeg-reference"
    near_static = [cv2.imread(str(source / f"{c}_0000{t}.jpg"), cv2.IMREAD_GRAYSCALE) for c in "xy" for t in (2, 4)]
    for levels in near_static:  # fields with almost no motion split evenly between 127 and 128
        assert abs(float(levels.mean()) - 127.5) < 0.05
    result = flowprep("import", source, tmp_path / "ref")
    assert result.returncode == 1 and "10 RGB frames but 5 flow fields (expected 9)" in result.stderr
    result = flowprep("import", source, tmp_path / "ref", "--trim-rgb")
    assert result.returncode == 0, result.stderr
    assert "frames after 6 dropped" in result.stderr
    assert flowprep("verify", tmp_path / "ref").returncode == 0
    store = FlowStore(tmp_path / "ref")
    (video,) = store.videos()
    assert store.meta(video)["num_frames"] == 6 and store.meta(video)["num_flows"] == 5
    for t in range(5):
        flow = store.flow(video, t)
        for c, name in enumerate("xy"):
            levels = cv2.imread(str(source / f"{name}_{t + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
            np.testing.assert_allclose(flow[..., c], levels * 40 / 255 - 20, atol=1e-4)
    for t in range(6):
        assert store.records(video, "rgb", [t])[0] == (source / f"img_{t + 1:05d}.jpg").read_bytes()


def test_count_mismatches_and_bad_files_are_named_failures(clips: dict[str, Path], tmp_path: Path) -> None:
    layout = LAYOUTS["tsn"]
    root = tmp_path / "tree"
    cases = {}

    def case(name: str, **kwargs) -> Path:
        folder = root / "c" / name
        write_frames_and_flow(clips["walk/clip_a"], layout, folder, folder, folder, **kwargs)
        return folder

    cases["gap"] = case("gap")
    (cases["gap"] / "img_00004.jpg").unlink()
    cases["no_y"] = case("no_y")
    (cases["no_y"] / "flow_y_00006.jpg").unlink()
    cases["truncated"] = case("truncated")
    data = (cases["truncated"] / "flow_x_00002.jpg").read_bytes()
    (cases["truncated"] / "flow_x_00002.jpg").write_bytes(data[: len(data) // 2])
    cases["png"] = case("png")
    ok, png = cv2.imencode(".png", np.zeros((120, 160), np.uint8))
    (cases["png"] / "flow_y_00003.jpg").write_bytes(png.tobytes())
    cases["size"] = case("size")
    cv2.imwrite(str(cases["size"] / "flow_x_00002.jpg"), np.full((240, 320), 128, np.uint8))
    cases["more_flow"] = case("more_flow", flows=9)
    cases["fewer_flow"] = case("fewer_flow", flows=3)
    cases["n_flow"] = case("n_flow", flows=7)  # a tool that writes N fields for N frames
    cases["good"] = case("good")
    cases["zero_based"] = case("zero_based")
    for p in sorted(cases["zero_based"].iterdir()):
        n = int(p.stem.rsplit("_", 1)[1])
        p.rename(p.with_name(f"{p.stem.rsplit('_', 1)[0]}_{n - 1:05d}.jpg"))

    result = flowprep("import", root, tmp_path / "store", "--layout", "tsn")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    reasons = {video.split("/")[-1]: f["reason"] for video, f in read_failures(tmp_path / "store").items()}
    assert set(reasons) == {"gap", "no_y", "truncated", "png", "size", "more_flow", "fewer_flow", "zero_based"}
    assert "number 4 is missing" in reasons["gap"]
    assert "6 dx and 5 dy files; the pair of flow_x_00006.jpg is missing" in reasons["no_y"]
    assert reasons["truncated"] == "flow_x_00002.jpg: truncated JPEG (no end-of-image marker)"
    assert reasons["png"] == "flow_y_00003.jpg: not a JPEG file (no start-of-image marker)"
    assert "flow_x_00002.jpg: 320x240, but" in reasons["size"] and "is 160x120" in reasons["size"]
    # TSN trees (dense_flow): 6 frames 1..6 and field files 1..N; file 1 starts at frame 0, not written
    assert reasons["more_flow"] == "8 flow fields but only 6 RGB frames (expected at most 6)"
    assert "6 RGB frames but 2 flow fields (expected 5); --trim-rgb" in reasons["fewer_flow"]
    assert "start at img_00000.jpg; the tsn layout numbers them from 1" in reasons["zero_based"]
    for reason in reasons.values():
        assert "\n" not in reason and "Traceback" not in reason
    store = FlowStore(tmp_path / "store")
    assert store.videos() == ["c/good", "c/n_flow"]
    assert store.meta("c/n_flow")["num_flows"] == 5
    notes = store.meta("c/n_flow")["import_notes"]
    assert "flow_x_00001.jpg and flow_y_00001.jpg dropped: the tsn layout's field k is the flow from frame k−1" \
        in notes[0]
    assert "the last field (a repeat the other tool writes) was dropped" in notes[1]
    # fixing a video and running again imports it and clears its failure; the store's settings hold
    (cases["gap"] / "img_00005.jpg").rename(cases["gap"] / "img_00004.jpg")
    for n in range(6, 7):
        (cases["gap"] / f"img_{n:05d}.jpg").rename(cases["gap"] / f"img_{n - 1:05d}.jpg")
    (cases["gap"] / "flow_x_00006.jpg").unlink()
    (cases["gap"] / "flow_y_00006.jpg").unlink()
    result = flowprep("import", root, tmp_path / "store", "--layout", "tsn", "--trim-rgb")
    assert result.returncode == 1, result.stderr
    assert "c/gap" not in read_failures(tmp_path / "store") and "c/fewer_flow" in FlowStore(tmp_path / "store")
    result = flowprep("import", root, tmp_path / "store", "--bound", "32")
    assert result.returncode == 2 and "bound=20.0 (32.0)" in result.stderr
    result = flowprep("extract", clips["walk/clip_a"], tmp_path / "store", "--algo", "dis")
    assert result.returncode == 2 and "imported files (extracted flow)" in result.stderr


def test_grey_flow_saved_as_colour_reads_as_grey(clips: dict[str, Path], tmp_path: Path) -> None:
    layout = LAYOUTS["mmaction"]
    folder = tmp_path / "tree" / "v1"
    write_frames_and_flow(clips["run/clip_c"], layout, folder, folder, folder, colour_flow=True)
    assert do_import(tmp_path / "tree", tmp_path / "store").stored == 1
    levels = cv2.imread(str(folder / "x_00002.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    np.testing.assert_allclose(FlowStore(tmp_path / "store").flow("v1", 1)[..., 0], (levels - 127) * 40 / 255,
                               atol=1e-5)  # flow_extraction.py floors: 0 px at 127
    # a colour image as flow is refused
    image = cv2.imread(str(folder / "img_00001.jpg"))
    cv2.imwrite(str(folder / "x_00001.jpg"), image)
    report = do_import(tmp_path / "tree", tmp_path / "store2")
    assert "a colour image" in report.failures[0].reason


def test_rgb_only_and_flow_only_stores(clips: dict[str, Path], tiny: Path, tmp_path: Path) -> None:
    layout = LAYOUTS["uv"]
    source, rgb = build_tree(tmp_path / "tree", layout, clips)
    do_import(rgb, tmp_path / "rgb-only", layout="uv")
    do_import(source, tmp_path / "flow-only")
    rgb_store, flow_store = FlowStore(tmp_path / "rgb-only"), FlowStore(tmp_path / "flow-only")
    assert rgb_store.settings()["imported"]["streams"] == ["rgb"]
    assert flow_store.settings()["imported"]["streams"] == ["flow"]
    assert rgb_store.meta("walk/clip_a")["num_flows"] == 0 and flow_store.meta("walk/clip_a")["num_frames"] == 0
    for path in ("rgb-only", "flow-only"):
        assert flowprep("verify", tmp_path / path).returncode == 0
    assert "(flow)" in flowprep("info", tmp_path / "flow-only").stdout
    # a tree whose video lacks its RGB frames, importing both streams: that video fails
    (tmp_path / "tree" / "rgb" / "run" / "clip_c").rename(tmp_path / "clip_c-moved")
    result = flowprep("import", source, tmp_path / "both", "--rgb", rgb, "--streams", "both")
    assert result.returncode == 1 and "no RGB frames for this video" in result.stderr
    # the trainer refuses the stream a store lacks, in one line
    config = write_config(tiny, tmp_path, stream="spatial", iterations=2)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["datasets"][0]["store"] = str(tmp_path / "flow-only")
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match="holds no RGB frames .* a spatial net needs them"):
        fit(load_config(config))


def test_an_imported_store_of_the_built_in_dataset_trains(tiny: Path, tmp_path: Path) -> None:
    """Extracted store → mmaction files (flow mapped onto their levels) → imported store → trainer fit."""
    report = run_export(tiny / "a" / "flow", tmp_path / "files", LAYOUTS["mmaction"])
    original = FlowStore(tiny / "a" / "flow")
    assert report.exported == len(original) and report.reencoded == sum(
        original.meta(v)["num_flows"] for v in original.videos())
    result = flowprep("import", tmp_path / "files", tmp_path / "imported")
    assert result.returncode == 0, result.stderr
    imported = FlowStore(tmp_path / "imported")
    assert imported.videos() == original.videos()
    video = original.videos()[0]
    assert imported.records(video, "rgb", [0]) == original.records(video, "rgb", [0])
    # one level of the target (40/255 px) plus JPEG's error of the second encoding
    assert np.abs(imported.flow(video, 3) - original.flow(video, 3)).mean() < 0.15
    config = write_config(tiny, tmp_path, stream="temporal", iterations=4)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["datasets"][0]["store"] = str(tmp_path / "imported")
    config.write_text(yaml.safe_dump(cfg))
    summary = fit(load_config(config))
    assert summary["iterations"] == 4 and Path(summary["checkpoint"]).is_file()


def test_kill_minus_9_then_resume(clips: dict[str, Path], tmp_path: Path) -> None:
    """A run stopped (SIGSTOP) after its first commit holds the store's lock; kill -9, then the same
    command resumes and skips what was committed."""
    layout = LAYOUTS["mmaction"]
    source, _ = build_tree(tmp_path / "tree", layout, clips)
    for i in range(300):  # enough work that the run is still going when it is stopped
        shutil.copytree(source / "walk" / "clip_a", source / "copies" / f"v{i:03d}")
    process = subprocess.Popen([sys.executable, "-m", "flowprep", "import", source, tmp_path / "store",
                                "--workers", "1", "--no-content-check"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "store" / "shard-00000.lmdb" / "data.mdb").exists():
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        assert process.poll() is None, "the run ended before it could be stopped"
        busy = flowprep("import", source, tmp_path / "store")
        assert busy.returncode == 2 and "flowprep import" in busy.stderr and "pid" in busy.stderr
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    stored = []
    if (tmp_path / "store" / "flowprep.json").exists():
        store = FlowStore(tmp_path / "store")
        stored = store.videos()
        store.close()  # this process's handle would not see the shard grow past its map
    assert len(stored) < 303
    result = flowprep("import", source, tmp_path / "store", "--no-content-check")
    assert result.returncode == 0, result.stderr
    assert f"skipped {len(stored)} already complete" in result.stderr
    assert len(FlowStore(tmp_path / "store").videos()) == 303
    assert flowprep("verify", tmp_path / "store", "--no-decode").returncode == 0


def test_export_refuses_a_folder_of_other_files_and_resumes(clips: dict[str, Path], tmp_path: Path) -> None:
    source, _ = build_tree(tmp_path / "tree", LAYOUTS["denseflow"], clips)
    do_import(source, tmp_path / "store")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = flowprep("export", tmp_path / "store", tmp_path / "busy", "--layout", "denseflow")
    assert result.returncode == 2 and "not empty and not an export of flowprep" in result.stderr
    run_export(tmp_path / "store", tmp_path / "out", LAYOUTS["denseflow"], videos=["walk/clip_a"])
    report = run_export(tmp_path / "store", tmp_path / "out", LAYOUTS["denseflow"])
    assert (report.skipped, report.exported) == (1, 2)
    assert tree_files(tmp_path / "out") == tree_files(source)
    result = flowprep("export", tmp_path / "store", tmp_path / "out", "--layout", "tsn")
    assert result.returncode == 2 and "layout='denseflow' ('tsn')" in result.stderr
    (tmp_path / "a-file").write_text("")
    result = flowprep("export", tmp_path / "store", tmp_path / "a-file", "--layout", "tsn")
    assert result.returncode == 2 and "cannot create the export folder" in result.stderr


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = flowprep("import", tmp_path / "missing", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / 'missing'}: no such folder"
    (tmp_path / "empty" / "v").mkdir(parents=True)
    (tmp_path / "empty" / "v" / "notes.txt").write_text("x")
    result = flowprep("import", tmp_path / "empty", tmp_path / "out")
    assert result.returncode == 2 and "no numbered JPEG frames or flow of a known layout" in result.stderr
    assert "Traceback" not in result.stderr
    assert "mmaction" in flowprep("import", "--help").stdout


def test_hostile_trees_a_fifo_link_cycles_and_a_second_link_to_a_video(clips: dict[str, Path], tmp_path: Path) -> None:
    layout = LAYOUTS["mmaction"]
    root = tmp_path / "tree"
    for name in ("good", "fifo"):
        folder = root / "c" / name
        write_frames_and_flow(clips["run/clip_c"], layout, folder, folder, folder)
    fifo = root / "c" / "fifo" / "x_00002.jpg"
    fifo.unlink()
    os.mkfifo(fifo)  # opened for reading, it would wait for a writer forever
    (root / "c" / "loop").symlink_to("..")  # a cycle
    (root / "c" / "good" / "up").symlink_to("../..")  # another
    (root / "again").symlink_to("c/good")  # a second way to one video
    result = subprocess.run([sys.executable, "-m", "flowprep", "import", root, tmp_path / "store"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "c/fifo: x_00002.jpg: cannot read (not a regular file (a FIFO))" in result.stderr
    for link in ("c/loop", "c/good/up", "again"):
        assert result.stderr.count(f"{root / link}: skipped, a link to ") == 1, result.stderr
    assert FlowStore(tmp_path / "store").videos() == ["c/good"]


def test_dry_run_plan_and_files_not_read(clips: dict[str, Path], tmp_path: Path) -> None:
    layout = LAYOUTS["tsn"]
    root = tmp_path / "tree"
    folder = root / "walk" / "clip_a"
    write_frames_and_flow(clips["walk/clip_a"], layout, folder, folder, folder)
    (folder / "flow_x_00001.bin").write_bytes(b"\0" * 16)  # binary flow beside the JPEGs (old gpu_flow)
    (folder / "notes.txt").write_text("hand-made")
    dry = flowprep("import", root, tmp_path / "store", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "store").exists()
    lines = dry.stdout.splitlines()
    assert lines[0] == "layout   tsn (auto: from the file names); 1 videos, e.g. walk/clip_a"
    assert "files    flow_x_N.jpg + flow_y_N.jpg: numbered from 00001, 5 digits" in lines
    assert ("pairing  field file k is the flow from frame k−1 to img_k (TSN dense_flow): stored field 0 = "
            "flow_x_00002 (img_00001 → img_00002); flow_x_00001 is dropped (its first frame is not in the tree)"
            ) in lines
    assert "counts   walk/clip_a: 6 frames, 6 field files" in lines
    assert any(line.startswith("not read ") and "1 other (.bin)" in line and "1 other (.txt)" in line
               for line in lines)
    real = flowprep("import", root, tmp_path / "store")
    assert real.returncode == 0 and "plan: pairing  field file k is the flow from frame k−1" in real.stderr

    # a wrong --layout that would fail every video stops the run in one line naming the layout that fits
    for wrong in ("denseflow", "mmaction-opencv"):
        refused = flowprep("import", root, tmp_path / "wrong", "--layout", wrong)
        assert refused.returncode == 2 and not (tmp_path / "wrong").exists()
        assert refused.stderr.splitlines()[-1].endswith("(they start at 1); the tsn layout reads them (--layout tsn)")
        assert f"as the {wrong} layout does" in refused.stderr.splitlines()[-1]

    # flow the layout would not read stops the run in one line naming the layout that reads it
    shutil.copy(folder / "flow_x_00002.jpg", folder / "x_00002.jpg")
    refused = flowprep("import", root, tmp_path / "other", "--layout", "tsn")
    assert refused.returncode == 2 and not (tmp_path / "other").exists()
    assert refused.stderr.splitlines()[-1] == (f"error: {folder / 'x_00002.jpg'}: 1 flow file(s) the tsn layout "
                                               "does not read; the mmaction layout reads them (--layout mmaction)")
    (folder / "x_00002.jpg").unlink()
    ok, png = cv2.imencode(".png", np.zeros((120, 160, 3), np.uint8))
    (folder / "flow_00003.png").write_bytes(png.tobytes())  # denseflow --st png
    refused = flowprep("import", root, tmp_path / "other")
    assert refused.returncode == 2 and "PNG flow is not read" in refused.stderr.splitlines()[-1]


def test_the_folder_of_both_archives_and_export_digits(clips: dict[str, Path], tmp_path: Path) -> None:
    """The parent folder of the shared UCF-101 archives (tvl1_flow/u, tvl1_flow/v and jpegs_256) imports
    as the two trees given apart; an export keeps the digits it is told."""
    flow, rgb = build_tree(tmp_path / "tree", LAYOUTS["uv"], clips)
    parent = tmp_path / "ucf101"
    parent.mkdir()
    flow.rename(parent / "tvl1_flow")
    rgb.rename(parent / "jpegs_256")
    result = flowprep("import", parent, tmp_path / "store")
    assert result.returncode == 0, result.stderr
    assert f"flow from {parent / 'tvl1_flow'} (u/, v/), RGB frames from {parent / 'jpegs_256'}" in result.stderr
    apart = do_import(parent / "tvl1_flow", tmp_path / "apart", parent / "jpegs_256")
    assert apart.stored == 3 and store_records(tmp_path / "store") == store_records(tmp_path / "apart")

    result = flowprep("export", tmp_path / "store", tmp_path / "six", "--layout", "mmaction", "--digits", "6")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "six" / "walk" / "clip_a").iterdir())[:2] == ["img_000001.jpg",
                                                                                          "img_000002.jpg"]
    # the export's record says its files' zero level (127.5, the uv files'), not the mmaction layout's 127
    result = flowprep("import", tmp_path / "six", tmp_path / "again")
    assert result.returncode == 0 and "0 px at 127.5: written by flowprep export" in result.stderr
    assert store_records(tmp_path / "again") == store_records(tmp_path / "store")
    other = flowprep("export", tmp_path / "store", tmp_path / "six", "--layout", "mmaction")
    assert other.returncode == 2 and "digits=6" in other.stderr


def write_gpu_flow_tree(video: Path, out: Path, name: str) -> np.ndarray:
    """A video as newer gpu_flow (feichtenhofer/gpu_flow, compute_flow.cpp) writes it with clipFlow off:
    OUT/x/<name>/frame%06d.jpg and OUT/y/... from 1 (field k: frame k−1 → k, 0-based frames), RGB
    OUT/rgb/<name>/frame%06d.jpg from 1 (frame k−1), each field mapped from its own [min, max] onto
    [0, 255] by rounding, and the ranges in OUT/bins/<name>.bin (4 float32 a field); an empty
    OUT/bins/<name>/ folder as it makes one. Returns the ranges."""
    capture = cv2.VideoCapture(str(video))
    frames = []
    while (got := capture.read())[0]:
        frames.append(got[1])
    for sub in ("x", "y", "rgb", "bins"):
        (out / sub / name).mkdir(parents=True, exist_ok=True)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    ranges = []
    for k in range(1, len(frames)):
        a, b = (cv2.cvtColor(frames[i], cv2.COLOR_BGR2GRAY) for i in (k - 1, k))
        flow = dis.calc(a, b, None)
        row = []
        for c, sub in ((0, "x"), (1, "y")):
            lo, hi = float(flow[..., c].min()), float(flow[..., c].max())
            levels = np.clip(np.rint(255 * (flow[..., c] - lo) / (hi - lo)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(out / sub / name / f"frame{k:06d}.jpg"), levels)
            row += [lo, hi]
        ranges.append(row)
    for k, frame in enumerate(frames, start=1):
        cv2.imwrite(str(out / "rgb" / name / f"frame{k:06d}.jpg"), frame)
    array = np.asarray(ranges, np.float32)
    (out / "bins" / f"{name}.bin").write_bytes(array.tobytes())
    return array


def test_trees_of_newer_gpu_flow_mmaction_tools_and_denseflow_steps(clips: dict[str, Path], tmp_path: Path) -> None:
    """Trees as the tools write them (read from their source): newer gpu_flow (x/, y/, rgb/, per-field
    ranges in bins/), mmaction2's flow_extraction.py (floor: 0 px at 127) and its build_rawframes.py
    --use-opencv (RGB from 1, flow from 0), denseflow -s 2 beside -s 1."""
    # gpu_flow, clipFlow off: each field its own range, read from bins/<video>.bin
    tree = tmp_path / "gpu_flow"
    ranges = {name: write_gpu_flow_tree(clips[f"walk/{name}"], tree, name) for name in ("clip_a", "clip_b")}
    result = flowprep("import", tree, tmp_path / "gf")
    assert result.returncode == 0, result.stderr
    assert "plan: ranges   2 of 2 videos have gpu_flow's .bin of field ranges" in result.stderr
    assert "content:" not in result.stderr  # the content check of the import found nothing to say
    store = FlowStore(tmp_path / "gf")
    assert store.videos() == ["clip_a", "clip_b"]
    meta = store.meta("clip_a")
    assert (meta["num_frames"], meta["num_flows"]) == (7, 6)
    assert meta["source"]["ranges"] == str(tree / "bins" / "clip_a.bin")
    for t in range(6):  # record by record: field t is x/frame{t+1}, over stored frames t → t+1
        _, x_range, y_range, jx, jy = unpack_flow_record(store.records("clip_a", "flow", [t])[0])
        assert bytes(jx) == (tree / "x" / "clip_a" / f"frame{t + 1:06d}.jpg").read_bytes()
        assert (x_range, y_range) == (tuple(ranges["clip_a"][t, :2]), tuple(ranges["clip_a"][t, 2:]))
        levels = cv2.imread(str(tree / "y" / "clip_a" / f"frame{t + 1:06d}.jpg"), cv2.IMREAD_GRAYSCALE)
        lo, hi = ranges["clip_a"][t, 2:]
        np.testing.assert_allclose(store.flow("clip_a", t)[..., 1], lo + levels * (hi - lo) / 255, atol=1e-4)
        rgb_file = tree / "rgb" / "clip_a" / f"frame{t + 1:06d}.jpg"
        assert store.records("clip_a", "rgb", [t])[0] == rgb_file.read_bytes()
    checked = flowprep("verify", tmp_path / "gf", "--content")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # older gpu_flow: u/ and v/, the range file beside the video's folder in u/
    old = tmp_path / "gpu_flow_old"
    shutil.copytree(tree, old)
    (old / "x").rename(old / "u")
    (old / "y").rename(old / "v")
    (old / "bins" / "clip_a.bin").rename(old / "u" / "clip_a.bin")
    assert flowprep("import", old, tmp_path / "gf-old").returncode == 0
    assert FlowStore(tmp_path / "gf-old").meta("clip_a")["source"]["ranges"] == str(old / "u" / "clip_a.bin")
    assert store_records(tmp_path / "gf-old") == store_records(tmp_path / "gf")
    # a range file too short for the video's fields is that video's failure, named
    (tree / "bins" / "clip_b.bin").write_bytes(ranges["clip_b"][:2].tobytes())
    result = flowprep("import", tree, tmp_path / "gf2")
    assert result.returncode == 1 and "clip_b.bin: 32 bytes, but 5 fields need 80" in result.stderr

    # mmaction2 flow_extraction.py floors: the plan finds 0 px at 127 in the files
    for name, zero, how in (("mmaction", 127, "floors"), ("tsn", 127.5, "rounds")):
        root = tmp_path / name
        write_frames_and_flow(clips["run/clip_c"], LAYOUTS[name], *[root / "run" / "clip_c"] * 3)
        dry = flowprep("import", root, tmp_path / f"{name}-store", "--dry-run")
        assert f"(0 px at {zero:g}: from the files:" in dry.stdout and f"as a tool that {how}" in dry.stdout

    # build_rawframes.py --use-opencv: img_ from 1 (OpenCV) and flow_x_ from 0 (denseflow) in one folder
    root = tmp_path / "opencv"
    write_frames_and_flow(clips["walk/clip_a"], LAYOUTS["mmaction-opencv"], *[root / "walk" / "clip_a"] * 3)
    assert sorted(p.name for p in (root / "walk" / "clip_a").iterdir())[:2] == ["flow_x_00000.jpg", "flow_x_00001.jpg"]
    dry = flowprep("import", root, tmp_path / "opencv-store", "--dry-run")
    assert "layout   mmaction-opencv (auto: from the file names)" in dry.stdout
    assert ("pairing  field file k is the flow from img_k+1 to img_k+2: stored field 0 = flow_x_00000 "
            "(img_00001 → img_00002)") in dry.stdout
    # denseflow -s 2 beside -s 1: flow between frames two apart is refused, not dropped in silence
    folder = root / "walk" / "clip_a"
    shutil.copy(folder / "flow_x_00000.jpg", folder / "flow_x_p2_00000.jpg")
    refused = flowprep("import", root, tmp_path / "opencv-store")
    assert refused.returncode == 2 and "denseflow wrote them with -s other than 1" in refused.stderr.splitlines()[-1]
