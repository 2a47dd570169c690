"""Temporal input volumes, augmentation and sampling (trainer/inputs.py, trainer/data.py), on real stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowprep.algorithms.pairs import interior, translation
from flowprep.algorithms.registry import create_flow
from trainer.crops import flip_horizontal, jitter_shift, random_crop, ten_crops
from trainer.data import TrainingSet, batch_items
from trainer.encoded import EncodedInput, collate
from trainer.inputs import InputSpec, as_input
from trainer.volumes import VideoEntry, field_indices, flow_volume, stack_fields, tau_range


def const_field(dx: float, dy: float, h: int = 6, w: int = 8) -> tuple[np.ndarray, np.ndarray]:
    return np.full((h, w), dx, np.float32), np.full((h, w), dy, np.float32)


def test_channel_order_dx_then_dy_of_each_field_in_time_order() -> None:
    fields = [const_field(10 * k + 1, 10 * k + 2) for k in range(4)]
    volume = stack_fields(fields, "optical_flow", mean_subtraction=False)
    assert volume.shape == (8, 6, 8)
    # paper: channel 2k-1 (1-based) = d^x of field tau+k-1, channel 2k = d^y
    assert [float(volume[c, 0, 0]) for c in range(8)] == [1, 2, 11, 12, 21, 22, 31, 32]


def test_mean_subtraction_per_field() -> None:
    dx = np.arange(48, dtype=np.float32).reshape(6, 8)
    volume = stack_fields([(dx, dx * 0 + 3), (dx * 2, dx * 0 - 1)], mean_subtraction=True)
    assert np.allclose(volume.reshape(4, -1).mean(axis=1), 0, atol=1e-5)
    assert np.allclose(volume[0], dx - dx.mean())


def test_trajectory_stacking_follows_the_motion() -> None:
    """A pattern moving right 2 px/frame: field k has a marker at x = 2 + 2k. Flow stacking samples
    x = 2 every time; trajectory stacking follows p_k = p_{k-1} + d(p_{k-1}) to the marker."""
    h, w = 5, 20
    fields = []
    for k in range(3):
        dx = np.full((h, w), 2.0, np.float32)
        dy = np.zeros((h, w), np.float32)
        dy[:, 2 + 2 * k] = 7.0  # marker travelling with the content
        fields.append((dx, dy))
    traj = stack_fields(fields, "trajectory", mean_subtraction=False)
    flow = stack_fields(fields, "optical_flow", mean_subtraction=False)
    assert [float(traj[2 * k + 1, 2, 2]) for k in range(3)] == [7.0, 7.0, 7.0]
    assert [float(flow[2 * k + 1, 2, 2]) for k in range(3)] == [7.0, 0.0, 0.0]


def test_bidirectional_indices_and_tau_range() -> None:
    assert field_indices(5, 20, 4, True) == [("flow", 5), ("flow", 6), ("back", 4), ("back", 3)]
    assert field_indices(3, 20, 3, False) == [("flow", 3), ("flow", 4), ("flow", 5)]
    assert tau_range(20, 10, False) == (0, 10)
    assert tau_range(20, 10, True) == (5, 15)


def test_clip_shorter_than_L_repeats_its_last_field() -> None:
    assert tau_range(4, 10, False) == (2, 2)
    assert field_indices(0, 4, 6, False) == [("flow", t) for t in (0, 1, 2, 3, 3, 3)]
    assert field_indices(0, 3, 4, True) == [("flow", 0), ("flow", 1), ("back", 0), ("back", 0)]


def test_flipped_flow_volume_equals_flow_of_mirrored_frames() -> None:
    first, second, _ = translation(120, 160, dx=3.5, dy=-1.25, seed=4)
    brox = create_flow("brox")
    flow = brox(first, second)
    mirrored = brox(np.ascontiguousarray(first[:, ::-1]), np.ascontiguousarray(second[:, ::-1]))
    volume = stack_fields([(flow[..., 0], flow[..., 1])], mean_subtraction=False)
    flipped = flip_horizontal(volume, is_flow=True)
    expected = stack_fields([(mirrored[..., 0], mirrored[..., 1])], mean_subtraction=False)
    error = np.abs(interior(flipped.transpose(1, 2, 0)) - interior(expected.transpose(1, 2, 0)))
    assert error.mean() < 0.05
    assert float(np.median(flipped[0])) == pytest.approx(-3.5, abs=0.05)  # x negated
    assert float(np.median(flipped[1])) == pytest.approx(-1.25, abs=0.05)  # y kept
    rgb = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert np.array_equal(flip_horizontal(rgb, is_flow=False), rgb[:, :, ::-1])


class _NoStore:
    pass


def _sets() -> list[TrainingSet]:
    a = TrainingSet("a", _NoStore(), ["x", "y"], [VideoEntry(f"a{i}", i % 2, 5, 4, 0) for i in range(6)], [])
    b = TrainingSet("b", _NoStore(), ["p", "q", "r"], [VideoEntry(f"b{i}", i % 3, 5, 4, 0) for i in range(3)], [])
    return [a, b]


def test_batches_are_class_balanced_across_datasets_and_keyed_by_step() -> None:
    sets = _sets()
    big = batch_items(7, 0, sets, 50_000)
    counts = np.zeros(5)
    for item in big:
        label = sets[item.dataset].train[item.video].label
        counts[(0 if item.dataset == 0 else 2) + label] += 1
    assert np.allclose(counts / counts.sum(), 0.2, atol=0.01)  # 5 classes in all, uniformly
    assert batch_items(7, 0, sets, 64) == batch_items(7, 0, sets, 64)
    assert batch_items(7, 0, sets, 64) != batch_items(8, 0, sets, 64)
    two_ranks = batch_items(7, 0, sets, 64)[0::2] + batch_items(7, 0, sets, 64)[1::2]
    assert sorted(two_ranks, key=repr) == sorted(batch_items(7, 0, sets, 64), key=repr)


def test_input_spec_shapes_and_centre_crop(tmp_path) -> None:
    from flowprep.datasets.synthetic import SynthConfig, write_dataset
    from flowprep.extract import run_extract
    from flowprep.storage.settings import ExtractSettings
    from flowprep.storage.store import FlowStore

    write_dataset(tmp_path, SynthConfig(motion_classes=2, appearance_classes=0, clips_per_class=4, frames=6))
    run_extract(tmp_path / "videos", tmp_path / "flow", ExtractSettings(algo="dis", short_side=0), workers=1)
    store = FlowStore(tmp_path / "flow")
    entry = VideoEntry("MoveUp/v_MoveUp_g01_c01", 0, 6, 5, 0)
    spec = InputSpec("temporal", 10, "optical_flow", False, True, 96, True, 0.0, (0, 0, 0), (1, 1, 1), 1.0)
    x = spec.training_input(store, entry, seed=3)
    assert x.shape == (20, 96, 96) and x.dtype == torch.float32
    assert torch.equal(x, spec.training_input(store, entry, seed=3))
    rgb = InputSpec("spatial", 1, "optical_flow", False, True, 96, True, 0.1, (0.5,) * 3, (0.25,) * 3, 1.0)
    assert rgb.training_input(store, entry, seed=1).shape == (3, 96, 96)
    assert rgb.centre_input(store, entry).shape == (3, 96, 96)
    small = InputSpec("temporal", 2, "trajectory", False, True, 160, False, 0.0, (0,) * 3, (1,) * 3, 1.0)
    assert small.centre_input(store, entry).shape == (4, 160, 160)  # frames enlarged to fit the crop


@pytest.fixture(scope="module", params=[4.0, "adaptive"], ids=["bound4", "adaptive"])
def bidirectional_store(request, tmp_path_factory):
    """Built-in clips extracted with forward and backward flow, fixed bound (with clipping) or adaptive."""
    from flowprep.datasets.synthetic import SynthConfig, write_dataset
    from flowprep.extract import run_extract
    from flowprep.storage.settings import ExtractSettings
    from flowprep.storage.store import FlowStore

    root = tmp_path_factory.mktemp("bidir")
    write_dataset(root, SynthConfig(motion_classes=2, appearance_classes=1, clips_per_class=2, clips_per_group=1,
                                    frames=9, width=80, height=60))
    settings = ExtractSettings(algo="dis", short_side=0, bidirectional=True, bound=request.param)
    run_extract(root / "videos", root / "flow", settings, workers=1)
    store = FlowStore(root / "flow")
    meta = store.meta("MoveUp/v_MoveUp_g01_c01")
    return store, VideoEntry(meta["video"], 0, meta["num_frames"], meta["num_flows"], meta["num_backward"])


def _reference_input(spec: InputSpec, store, entry: VideoEntry, seed: int) -> tuple[torch.Tensor, bool]:
    """Training input the direct way: whole float frames, then crop, mirror, jitter, normalise; and
    whether it was mirrored."""
    rng = np.random.default_rng(seed)
    lo, hi = spec.tau_range(entry)
    tau = int(rng.integers(lo, hi + 1))
    if spec.stream == "spatial":
        array = store.rgb(entry.video, tau).transpose(2, 0, 1).astype(np.float32) / 255
    else:
        array = flow_volume(store, entry, tau, spec.flow_stack, spec.stacking, spec.bidirectional,
                            spec.mean_subtraction)
    array = random_crop(array, spec.crop, rng)
    mirrored = spec.flip and rng.random() < 0.5
    if mirrored:
        array = flip_horizontal(array, spec.stream == "temporal")
    if spec.stream == "spatial" and spec.rgb_jitter > 0:
        array = array + jitter_shift(spec.rgb_jitter, rng)[:, None, None]
    return spec.normalise(array), mirrored


@pytest.mark.parametrize("stream,bidirectional,mean_subtraction", [
    ("temporal", False, True), ("temporal", True, True), ("temporal", False, False), ("spatial", False, True)])
def test_inputs_cropped_from_levels_equal_whole_frame_conversion(bidirectional_store, stream, bidirectional,
                                                                 mean_subtraction) -> None:
    store, entry = bidirectional_store
    spec = InputSpec(stream, 4, "optical_flow", bidirectional, mean_subtraction, 48, True, 0.2,
                     (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.5)
    mirrored = 0
    for seed in range(12):
        reference, flipped = _reference_input(spec, store, entry, seed)
        assert torch.allclose(spec.training_input(store, entry, seed), reference, atol=1e-5), seed
        mirrored += flipped
    assert 0 < mirrored < 12  # both mirrored and plain crops were compared
    tau = sum(spec.tau_range(entry)) // 2
    whole = spec.raw(store, entry, tau)
    expected = torch.stack([spec.normalise(c) for c in ten_crops(whole, 48, stream == "temporal")])
    assert torch.allclose(spec.test_crops(store, entry, tau), expected, atol=1e-5)
    if stream == "temporal":
        reference = flow_volume(store, entry, tau, 4, "optical_flow", bidirectional, mean_subtraction)
        assert np.allclose(whole, reference, atol=1e-5)


@pytest.mark.parametrize("stream,bidirectional,mean_subtraction,crop", [
    ("temporal", False, True, 48), ("temporal", True, True, 48), ("temporal", False, False, 48),
    ("spatial", False, True, 48), ("temporal", False, True, 72), ("spatial", False, True, 72)])
def test_device_decoding_equals_the_cpu_path(bidirectional_store, stream, bidirectional, mean_subtraction,
                                             crop) -> None:
    """data.decode: device (JPEG bytes decoded by torchvision in the training process, crops as tensor
    ops; here on CPU tensors) gives the CPU path's inputs: training crops (mirrored or not, jittered),
    the 10 test crops and the centre crop. crop 72 > the 60-pixel frames: both paths enlarge first."""
    store, entry = bidirectional_store
    args = (stream, 4, "optical_flow", bidirectional, mean_subtraction, crop, True, 0.2,
            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.5)
    cpu, device = InputSpec(*args, decode="cpu"), InputSpec(*args, decode="device")
    # one level of the input: 1/255 of RGB over its std, or a flow level's pixels times flow_scale
    level = (1 / 255 / 0.224) if stream == "spatial" else 0.5 * 4.0 / 127 * (72 / 60 if crop == 72 else 1)
    tolerance = 1e-5 if crop == 48 else 1.01 * level
    for seed in range(8):
        encoded = device.training_input(store, entry, seed, packed=True)
        assert isinstance(encoded, EncodedInput) and encoded.jpegs
        batch = collate([(encoded, 3, 0)])
        got = as_input(batch[0], torch.device("cpu"))[0]
        expected = cpu.training_input(store, entry, seed)
        assert (got - expected).abs().max() <= tolerance, seed
    tau = sum(cpu.tau_range(entry)) // 2
    assert (device.test_crops(store, entry, tau) - cpu.test_crops(store, entry, tau)).abs().max() <= tolerance
    assert (device.centre_input(store, entry) - cpu.centre_input(store, entry)).abs().max() <= tolerance
