"""Round two of the outside audit (issue 26): a store from someone else cannot harm you, nothing is
trained on damaged bytes, resume is exact, and every user mistake is one line. Each test rebuilds a
reproduction of the audit with real files: real videos, real LMDB shards, real training runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import torch
from conftest import rewrite_checksums, to_pre_index_format, write_config, write_video
from test_cli import FAST, flowprep
from test_import import build_tree
from test_store_faults import _damaged_btree_page, _in_small_filesystem, edit_shard
from test_trainer_fit import REPO, trainer

from flowprep.layouts import LAYOUTS
from flowprep.storage.shard import StoreError, close_env, record_key
from flowprep.storage.store import FlowStore, ShardWriter
from trainer import checkpoint as ckpt
from trainer.config import Config, load_config
from trainer.optim import lr_schedule


def default_sigint() -> None:
    """In a child about to be interrupted: Ctrl-C's default handling, even where this test runs as a
    background job (a shell starts those with SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a command that failed, and no traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def damage_entropy_data(jpeg: bytes, seed: int = 0) -> bytes:
    """The middle third of a JPEG's entropy-coded data replaced by random bytes: the markers stay intact
    and libjpeg still makes a picture of it (with a warning on stderr)."""
    data = bytearray(jpeg)
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    end = len(data) - 2
    a, b = start + (end - start) // 3, start + 2 * (end - start) // 3
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_GRAYSCALE) is not None
    return bytes(data)


def copy_video_as(store: Path, video: str, new_id: str) -> None:
    """Put a copy of ``video`` under ``new_id`` straight into the shard, as a store made by someone else
    (not by our writer, which refuses such ids) would hold it."""
    shard = store / "shard-00000.lmdb"

    def edit(txn, data, meta) -> None:
        value = json.loads(txn.get(video.encode(), db=meta))
        value["video"] = new_id
        for kind, count in (("rgb", value["num_frames"]), ("flow", value["num_flows"])):
            for t in range(count):
                txn.put(record_key(new_id, kind, t), txn.get(record_key(video, kind, t), db=data), db=data)
        txn.put(new_id.encode(), json.dumps(value).encode(), db=meta)

    edit_shard(shard, edit)


# 1. ids are paths: nothing is written or deleted outside the folder named


def test_a_store_with_an_id_that_climbs_out_is_refused(video_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    flowprep("extract", video_dir, store, *FAST, "--algo", "dis", check=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    copy_video_as(store, "clip_a", "../../victim")
    copy_video_as(store, "clip_c", "/tmp/absolute")
    verify = flowprep("verify", store, "--no-decode")
    assert verify.returncode == 1 and "'../../victim': not a safe video id" in verify.stdout
    assert "'/tmp/absolute': not a safe video id" in verify.stdout
    out = tmp_path / "exports" / "out"
    for layout in ("mmaction", "uv"):
        result = flowprep("export", store, out, "--layout", layout)
        assert result.returncode == 2 and "is not a safe path" in error_line(result)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"] and not Path("/tmp/absolute").exists()
    assert not (tmp_path / "exports").exists(), "refused before anything was written"
    with ShardWriter(tmp_path / "other") as writer, pytest.raises(StoreError, match="ids are paths"):
        writer.put_video("../x", [], {"video": "../x", "num_frames": 0, "num_flows": 0})


def test_a_list_naming_videos_outside_its_folder_gets_safe_ids(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    write_video(tmp_path / "up.avi", frames=5, seed=1)
    write_video(tmp_path / "elsewhere.avi", frames=5, seed=2)
    (tmp_path / "lists" / "videos.txt").write_text(f"../up.avi\n{tmp_path / 'elsewhere.avi'}\n")
    out = tmp_path / "store"
    flowprep("extract", tmp_path / "lists" / "videos.txt", out, *FAST, "--algo", "dis", check=True)
    assert FlowStore(out).videos() == ["elsewhere", "up"] and not (out / ".flowprep-run").exists()
    flowprep("export", out, tmp_path / "files", "--layout", "tsn", check=True)
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == [".flowprep-export.json", "elsewhere",
                                                                      "up"]


# 5. nested ids: A and A/B both exported, and a resumed export touches only its own files


def test_nested_ids_export_both_and_resume(tmp_path: Path) -> None:
    src = tmp_path / "videos"
    (src / "A").mkdir(parents=True)
    write_video(src / "A.avi", frames=6, seed=1)
    write_video(src / "A" / "B.avi", frames=5, seed=2)
    store = tmp_path / "store"
    flowprep("extract", src, store, *FAST, "--algo", "dis", check=True)
    out = tmp_path / "files"
    flowprep("export", store, out, "--layout", "mmaction", "--video", "A/B", check=True)
    first = flowprep("export", store, out, "--layout", "mmaction", check=True)
    assert "exported 1 videos" in first.stderr and "skipped 1 already exported" in first.stderr
    layout = LAYOUTS["mmaction"]
    assert (out / "A" / layout.file_name("rgb", 5)).is_file() and (out / "A" / layout.file_name("y", 4)).is_file()
    assert (out / "A" / "B" / layout.file_name("rgb", 4)).is_file()
    (out / "A" / layout.file_name("y", 4)).unlink()  # as a run killed half-way through A leaves it
    again = flowprep("export", store, out, "--layout", "mmaction", check=True)
    assert "exported 1 videos" in again.stderr and "skipped 1 already exported" in again.stderr
    assert (out / "A" / layout.file_name("y", 4)).is_file() and (out / "A" / "B" / layout.file_name("y", 3)).is_file()


# 2. damaged JPEG data that still decodes is refused wherever we decode


def test_damaged_jpeg_data_is_refused_by_import_verify_and_training(tiny: Path, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.avi", frames=6, seed=3)
    root, _ = build_tree(tmp_path / "tree", LAYOUTS["tsn"], {"walk/clip": clip})
    bad = root / "walk" / "clip" / LAYOUTS["tsn"].file_name("x", 2)
    bad.write_bytes(damage_entropy_data(bad.read_bytes()))
    refused = flowprep("import", root, tmp_path / "strict")
    assert refused.returncode == 1 and f"{bad.name}: damaged JPEG data (Corrupt JPEG data" in refused.stderr

    loose = tmp_path / "loose"
    flowprep("import", root, loose, "--no-data-check", check=True)
    verify = flowprep("verify", loose)
    # tsn: flow_x_00003 is the flow that ends at img_00003, stored field 1 (from stored frame 1 to 2)
    assert verify.returncode == 1 and "walk/clip: flow record 1 does not decode" in verify.stdout
    assert "damaged JPEG data" in verify.stdout and "Corrupt JPEG data" not in verify.stderr

    # the same damage inside a store training reads, with a checksum that matches (a store made elsewhere)
    store = tmp_path / "a"
    shutil.copytree(tiny / "a", store)
    video = FlowStore(store / "flow").videos()[0]
    shard = store / "flow" / "shard-00000.lmdb"

    def damage(txn, data, meta) -> None:
        from flowprep.storage.codec import pack_flow_jpegs, unpack_flow_record

        value = json.loads(txn.get(video.encode(), db=meta))
        records = []
        for t in range(value["num_flows"]):
            _, (lo, hi), _, jx, jy = unpack_flow_record(txn.get(record_key(video, "flow", t), db=data))
            records.append((record_key(video, "flow", t),
                            pack_flow_jpegs(damage_entropy_data(bytes(jx), t), bytes(jy), lo, hi)))
        for key, record in records:
            txn.put(key, record, db=data)

    edit_shard(shard, damage)
    rewrite_checksums(shard, video)
    config = write_config(tiny, tmp_path, iterations=40, train={"log_every": 40, "val_every": 0,
                                                               "checkpoint_every": 40})
    text = config.read_text().replace(str(tiny / "a"), str(store))
    for decode in ("cpu", "device"):
        config.write_text(text)
        result = trainer("fit", config, "--set", f"data.decode={decode}", "--set", f"run.dir={tmp_path / decode}")
        line = error_line(result)
        assert result.returncode == 2 and f"{video}: flow record" in line and "damaged JPEG data" in line, line


# 3. a damaged checkpoint is never used


def _flip_a_weight_bit(path: Path) -> None:
    """One bit flipped in the middle of the largest tensor of a torch.save zip (stored uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    header = entry.header_offset  # local file header: 30 bytes, then the name and the extra field
    name_length = int.from_bytes(data[header + 26:header + 28], "little")
    extra_length = int.from_bytes(data[header + 28:header + 30], "little")
    data[header + 30 + name_length + extra_length + entry.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_checkpoint_is_refused_everywhere(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=4)
    trainer("fit", config)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert ckpt.load(checkpoint)["step"] == 4
    _flip_a_weight_bit(checkpoint)
    torch.load(checkpoint, weights_only=True)  # torch itself reads it without a word
    clip = sorted((tiny / "a" / "videos").rglob("*.avi"))[0]
    for args in (("fit", config, "--resume", "--set", "optim.iterations=8"), ("test", checkpoint),
                 ("predict", clip, "--temporal", checkpoint)):
        result = trainer(*args)
        assert result.returncode == 2 and "damaged checkpoint" in error_line(result), args


# 4. resume is exact


def _run_until(config: Path, stop: callable, extra: tuple[str, ...] = ()) -> bool:
    """Start ``trainer fit`` and kill -9 it once ``stop()`` is true; False if it ended first."""
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "fit", str(config), *extra], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        if stop():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    return False


def test_a_killed_run_resumes_bit_for_bit(tiny: Path, tmp_path: Path) -> None:
    sections = {"train": {"log_every": 1, "val_every": 4, "checkpoint_every": 4}, "optim": {
        "batch_size": 8, "lr": 0.01, "schedule": "custom", "iterations": 12, "milestones": [8]}}
    for folder in ("ref", "0", "1", "2"):
        (tmp_path / folder).mkdir()
    reference = write_config(tiny, tmp_path / "ref", **sections)
    trainer("fit", reference)
    expected = ckpt.load(tmp_path / "ref" / "run" / "checkpoint.pt")["model"]

    def metrics_rows(run: Path) -> list[int]:
        path = run / "metrics.csv"
        lines = path.read_text().splitlines()[1:] if path.exists() else []
        return [int(line.split(",")[0]) for line in lines if line.split(",")[1] == "train"]

    def step(run: Path) -> int:
        try:
            return ckpt.load(run / "checkpoint.pt")["step"]
        except ckpt.CheckpointError:
            return 0

    points = {"after the first metrics row, before any checkpoint": lambda run: metrics_rows(run) and not
              (run / "checkpoint.pt").exists(),
              "after the first checkpoint": lambda run: step(run) >= 4,
              "after the second checkpoint": lambda run: step(run) >= 8}
    killed = 0
    for i, (name, when) in enumerate(points.items()):
        config = write_config(tiny, tmp_path / str(i), **sections)
        run = tmp_path / str(i) / "run"
        killed += _run_until(config, lambda when=when, run=run: when(run))
        result = trainer("fit", config, "--resume")
        assert result.returncode == 0, result.stderr
        state = ckpt.load(run / "checkpoint.pt")
        for key, value in expected.items():
            assert torch.equal(state["model"][key], value), f"killed {name}: {key} differs"
        iterations = metrics_rows(run)
        assert iterations == sorted(set(iterations)) == list(range(1, 13)), (name, iterations)
    assert killed >= 2, "the runs ended before they could be killed"


# 6. optim.scale scales presets only


def test_optim_scale_leaves_a_custom_schedule_as_given() -> None:
    cfg = Config()
    cfg.optim.schedule, cfg.optim.iterations, cfg.optim.milestones, cfg.optim.scale = "custom", 40, [30], 0.00625
    assert lr_schedule(cfg) == ([30], 40)
    cfg.optim.schedule = "scratch"
    assert lr_schedule(cfg) == ([312, 438], 500)


# 7. tracebacks where a user made a mistake or a file is damaged


def test_a_full_disk_while_writing_a_checkpoint_is_one_line(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=4)
    config.write_text(config.read_text().replace(str(tmp_path / "run"), str(tmp_path / "mnt" / "run")))
    script = f"""
    mount -t tmpfs -o size=64k tmpfs "$MNT"
    cd {REPO} && $PY -m trainer fit {config}; echo "rc=$?"
    ls -a "$MNT/run" | grep -c "tmp"
    """
    result = _in_small_filesystem(script, tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert "rc=2" in result.stdout and result.stdout.splitlines()[-1] == "0", result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and ("no space left on device" in errors[0]), result.stderr


def test_damaged_metadata_and_json_files_are_one_line(video_dir: Path, tmp_path: Path, tiny: Path) -> None:
    store = tmp_path / "store"
    flowprep("extract", video_dir, store, *FAST, "--algo", "dis", check=True)
    for name, content in (("failures.json", "[1, 2]"), ("failures.json", '{"x": 3}'), ("flowprep.json", "[]"),
                          ("flowprep.json", '{"imported": 5}'), ("flowprep.json", '{"algo": "dis", "bound": [1]}')):
        saved = (store / name).read_text() if (store / name).exists() else None
        (store / name).write_text(content)
        for command in (("info", store), ("verify", store, "--no-decode")):
            result = flowprep(*command)
            assert result.returncode == 1 and "Traceback" not in result.stderr, (name, content, result.stderr)
            assert f"{name}: damaged" in result.stdout, (name, content, result.stdout)
        result = flowprep("extract", video_dir, store, *FAST, "--algo", "dis")
        assert result.returncode == 2 and f"{name}: damaged" in error_line(result), (name, content)
        (store / name).unlink()
        if saved is not None:
            (store / name).write_text(saved)

    copy = tmp_path / "a"
    shutil.copytree(tiny / "a", copy)
    video = FlowStore(copy / "flow").videos()[1]
    close_env(copy / "flow" / "shard-00000.lmdb")
    edit_shard(copy / "flow" / "shard-00000.lmdb", lambda txn, data, meta: txn.put(
        video.encode(), txn.get(video.encode(), db=meta).replace(b'"num_flows": 7', b'"num_flows": "7"'), db=meta))
    verify = flowprep("verify", copy / "flow", "--no-decode")
    assert verify.returncode == 1 and f"metadata of video '{video}' is damaged ('num_flows' is '7'" in verify.stdout
    config = write_config(tiny, tmp_path, iterations=2)
    config.write_text(config.read_text().replace(str(tiny / "a"), str(copy)))
    # training reads counts from the index, which has its own CRC-32: a flipped bit in it is one line
    shard = copy / "flow" / "shard-00000.lmdb"
    close_env(shard)
    env = lmdb.open(str(shard), max_dbs=4)
    with env.begin(write=True) as txn:
        index = env.open_db(b"index", txn=txn)
        entry = bytearray(txn.get(video.encode(), db=index))
        entry[8] ^= 0x04  # a bit of the number of flow fields
        txn.put(video.encode(), bytes(entry), db=index)
    env.close()
    assert f"index entry of video '{video}' is damaged (index entry fails its CRC-32)" in error_line(
        trainer("fit", config))
    # a store written before the index: training reads the metadata, and its damage is one line
    to_pre_index_format(shard)
    assert f"metadata of video '{video}' is damaged" in error_line(trainer("fit", config))


def test_damaged_score_files_and_folders_as_outputs(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=2)
    trainer("fit", config)
    result = trainer("test", tmp_path / "run" / "checkpoint.pt", "--frames", "2", "-o", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    scores = next((tmp_path / "eval").glob("*-test.npz"))
    data = scores.read_bytes()
    for name, content in (("truncated", data[: len(data) // 2]), ("flipped", data[:200] + bytes([data[200] ^ 1])
                                                                   + data[201:])):
        bad = tmp_path / f"scores-{name}-test.npz"
        bad.write_bytes(content)
        for command in ("fuse", "report"):
            result = trainer(command, bad)
            assert result.returncode == 2 and "not a scores file written by trainer test, or damaged" in \
                error_line(result), (name, command)
    for command in ("fuse", "report"):
        result = trainer(command, scores, "-o", tmp_path)
        assert result.returncode == 2 and "a folder; -o names the file" in error_line(result)
    store = tiny / "a" / "flow"
    result = flowprep("show", store, FlowStore(store).videos()[0], "-o", tmp_path)
    assert result.returncode == 2 and "-o names the PNG file" in error_line(result)


def test_metrics_rows_damaged_by_hand_do_not_fail_a_finished_run(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=8)
    killed = _run_until(config, lambda: (tmp_path / "run" / "checkpoint.pt").exists())
    assert killed
    with open(tmp_path / "run" / "metrics.csv", "a") as f:
        f.write("oops,train,,x,not-a-number,,\x00,\n")
    result = trainer("fit", config, "--resume")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "run" / "curves.png").is_file()


@pytest.mark.parametrize("content,message", [
    (b"\xff\xfe not utf-8", "not a UTF-8 text file"),
    (None, "optim.scale must be a finite number > 0"),
])
def test_config_mistakes_are_one_line(tiny: Path, tmp_path: Path, content: bytes | None, message: str) -> None:
    config = write_config(tiny, tmp_path)
    if content is not None:
        config.write_bytes(content)
    result = trainer("fit", config, "--set", "optim.scale=.inf")
    assert result.returncode == 2 and message in error_line(result)
    folder = tmp_path / "weights"
    folder.mkdir()
    with pytest.raises(Exception, match="is a folder; give the weights file in it"):
        load_config(write_config(tiny, tmp_path), [f"model.pretrained={folder}"])
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"PK\x03\x04 not really")
    result = trainer("fit", write_config(tiny, tmp_path), "--set", f"model.pretrained={junk}")
    line = error_line(result)
    assert result.returncode == 2 and "not a PyTorch weights file" in line and "weights_only" not in result.stderr


def test_checkpoints_that_do_not_fit_their_config_are_one_line(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=2)
    trainer("fit", config)
    state = ckpt.load(tmp_path / "run" / "checkpoint.pt")
    clip = sorted((tiny / "a" / "videos").rglob("*.avi"))[0]
    other = dict(state, config={**state["config"], "model": {**state["config"]["model"], "width": 0.25}})
    no_classes = {k: v for k, v in state.items() if k != "classes"}
    for name, value, message in (("other.pt", other, "do not fit the net its config describes"),
                                 ("bare.pt", no_classes, "no classes")):
        ckpt.save_atomic(value, tmp_path / name)
        for args in (("test", tmp_path / name), ("predict", clip, "--temporal", tmp_path / name)):
            result = trainer(*args)
            assert result.returncode == 2 and message in error_line(result), (name, args)


# 8. the right words


def test_a_store_being_written_is_named_as_such(video_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    flowprep("extract", video_dir, store, *FAST, "--algo", "dis", check=True)
    root, _ = build_tree(tmp_path / "tree", LAYOUTS["tsn"], {"walk/clip": video_dir / "clip_a.avi"})
    with ShardWriter(store, what="flowprep extract"):
        for command in (("verify", store), ("info", store)):
            line = error_line(flowprep(*command))
            assert "being written by flowprep extract (pid" in line and "damaged" not in line
        refused = flowprep("import", root, store)
        assert refused.returncode == 2 and "in use by another flowprep extract (pid" in error_line(refused)


def test_ctrl_c_is_130_in_every_command(tiny: Path, tmp_path: Path) -> None:
    config = write_config(tiny, tmp_path, iterations=2)
    trainer("fit", config)
    command = [sys.executable, "-m", "trainer", "test", str(tmp_path / "run" / "checkpoint.pt"), "-o",
               str(tmp_path / "eval"), "--workers", "0", "--train-scores"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    assert proc.stderr.read(6) == "videos"  # scoring has started (its progress bar)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Aborted!" not in err and "Traceback" not in err, (proc.returncode, out, err)


def test_shard_sizes_parse_and_bound_import_shards(tmp_path: Path) -> None:
    result = flowprep("extract", ".", tmp_path / "o", "--shard-size", "1.2.3GB")
    assert result.returncode == 2 and "'1.2.3GB' is not a size" in result.stderr and "Traceback" not in result.stderr
    clips = {f"c/v{i}": write_video(tmp_path / f"v{i}.avi", frames=12, size=(320, 240), seed=i) for i in range(6)}
    root, _ = build_tree(tmp_path / "tree", LAYOUTS["tsn"], clips)
    out = tmp_path / "store"
    flowprep("import", root, out, "--shard-size", "400KB", check=True)
    sizes = [os.path.getsize(shard / "data.mdb") for shard in sorted(out.glob("shard-*.lmdb"))]
    assert len(sizes) > 1 and max(sizes[:-1]) < 2 * 400 * 1024, sizes


def test_one_damaged_page_does_not_hide_the_rest_of_its_shard(video_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    flowprep("extract", video_dir, store, *FAST, "--algo", "dis", check=True)
    _damaged_btree_page(store / "shard-00000.lmdb")
    result = flowprep("verify", store)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the rest of the shard is read record by record" in result.stdout
    damaged = {video for video in ("clip_a", "clip_c", "walk/clip_b")
               if any(line.startswith(f"problem: {video}:") for line in result.stdout.splitlines())}
    assert len(damaged) < 3, result.stdout
