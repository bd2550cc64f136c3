"""Image tasks: shapes, pixel range, labels, a disjoint held-out split, fast offline refusal."""

import time

import pytest
import torch

from trainables.data import IMAGE_TASKS, DatasetUnavailable, load_task
from trainables.data import images
from trainables.rcgm.errors import ConfigError


@pytest.fixture(scope="module")
def mnist():
    return load_task("mnist", seed=0)


@pytest.mark.parametrize("name, shape, train, held", [("mnist", (1, 28, 28), 4500, 500), ("digits", (1, 8, 8), 1497, 300)])
def test_bundled_task_contract(name, shape, train, held):
    task = load_task(name, seed=3)
    assert (task.name, task.kind, task.shape, task.num_classes) == (name, "images", shape, 10)
    assert (len(task.train_x), len(task.ref_x)) == (train, held)
    x, y = task.sample(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, *shape) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.long
    assert -1.0 <= x.min() < -0.99 and 0.99 < x.max() <= 1.0
    assert set(y.tolist()) <= set(range(10))
    rx, ry = task.reference(held, torch.Generator().manual_seed(0))
    assert rx.shape == (held, *shape) and -1 <= rx.min() and rx.max() <= 1
    # Stratified hold-out: every class equally represented.
    assert torch.bincount(ry, minlength=10).tolist() == [held // 10] * 10


def test_sampling_is_seeded(mnist):
    a = mnist.sample(16, torch.Generator().manual_seed(5))
    b = mnist.sample(16, torch.Generator().manual_seed(5))
    c = mnist.sample(16, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_labels_match_images(mnist):
    # Class means of real digits differ (a 1 is thin, a 0 is a ring): labels were not shuffled apart.
    means = torch.stack([images.to_unit_range(mnist.train_x[mnist.train_y == c]).mean(0) for c in range(10)])
    ref_means = torch.stack([images.to_unit_range(mnist.ref_x[mnist.ref_y == c]).mean(0) for c in range(10)])
    dist = torch.cdist(ref_means.flatten(1), means.flatten(1))
    assert torch.equal(dist.argmin(1), torch.arange(10))


def test_held_out_split_disjoint_from_training_pool(mnist):
    train = {bytes(img.numpy()) for img in mnist.train_x}
    held = {bytes(img.numpy()) for img in mnist.ref_x}
    assert len(train) + len(held) > 4900  # the bundled set has (almost) no duplicate images
    assert not train & held
    # And fixed across seeds, so metrics from different seeds share one reference set.
    assert torch.equal(load_task("mnist", seed=7).ref_x, mnist.ref_x)


def test_reference_without_replacement_and_bounded(mnist):
    rx, _ = mnist.reference(500, torch.Generator().manual_seed(1))
    assert len({bytes(img.numpy()) for img in rx}) == 500
    assert mnist.reference_size == 500
    with pytest.raises(ConfigError, match="eval_samples"):
        mnist.reference(501)


def test_full_datasets_registered_and_unknown_refused():
    assert {"mnist", "digits", "mnist-full", "cifar10"} <= set(IMAGE_TASKS)
    with pytest.raises(ConfigError, match="task"):
        images.load_image_task("svhn")


@pytest.mark.parametrize("name", ["mnist-full", "cifar10"])
def test_offline_full_dataset_raises_fast(name, tmp_path, monkeypatch):
    monkeypatch.setenv("RCGM_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(images, "host_reachable", lambda host, **kw: False)
    start = time.monotonic()
    with pytest.raises(DatasetUnavailable, match="RCGM_DATA_DIR"):
        load_task(name)
    assert time.monotonic() - start < 2.0


def test_real_probe_is_bounded(tmp_path, monkeypatch):
    host = images.TORCHVISION["mnist-full"][2]
    start = time.monotonic()
    online = images.host_reachable(host, timeout=2.0)
    assert time.monotonic() - start < 3.0
    if online:
        pytest.skip(f"{host} is reachable here; the offline refusal is covered by the monkeypatched test")
    monkeypatch.setenv("RCGM_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetUnavailable, match="unreachable"):
        load_task("mnist-full")


def test_image_folder_reader(tmp_path):
    from PIL import Image

    for cls, value in (("cats", 10), ("dogs", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (12, 12), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    x, y, classes = images.load_image_folder(tmp_path, size=8)
    assert classes == ["cats", "dogs"] and x.shape == (6, 3, 8, 8) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 0, 1, 1, 1] and int(x[3].float().mean()) == 200


def test_the_catalog_knows_each_bundled_tasks_held_out_size():
    # TrialConfig's eval_samples=auto is capped by these, before any data is read.
    from trainables.data.catalog import IMAGE_HELD_OUT

    for name in ("mnist", "digits"):
        assert len(load_task(name).ref_x) == IMAGE_HELD_OUT[name]


def test_image_tasks_are_loaded_once_per_process_and_never_written():
    # The preflight and every trial of a reused Tune process share one copy (MNIST takes ~1.7 s to read).
    task = load_task("digits")
    assert load_task("digits", seed=3) is task
    x, _ = task.sample(4, torch.Generator().manual_seed(0))
    before = task.train_x.clone()
    x.add_(5.0)
    assert torch.equal(task.train_x, before)
