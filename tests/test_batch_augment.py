"""The device fast path: exact pixels against numpy, distributions, and albumentations parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raycifar.recipe.batch_augment import DeviceBatches, augment_batch, mean_fill, normalise
from raycifar.recipe.transforms import eval_transform, train_transform
from raycifar.recipe.sharding import GlobalBatches

CPU = torch.device("cpu")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
# A mean whose uint8 fill (200) never occurs in `coord_images`, so holes can be found exactly.
FILL_MEAN = (200 / 255,) * 3
FILL = mean_fill(FILL_MEAN)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coord_images(n: int) -> np.ndarray:
    """n copies of an HWC image with R = row, G = column, B = 100: every position decodable."""
    r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    img = np.stack([r, c, np.full_like(r, 100)], -1).astype(np.uint8)
    return np.repeat(img[None], n, 0)


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, (n, 32, 32, 3), dtype=np.uint8)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def reference(img_hwc: np.ndarray, oy: int, ox: int, flip: bool, corner, fill, pad=4, cut=8):
    """The spec's pipeline on one image, in plain numpy, for given parameters."""
    out = np.pad(img_hwc, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")[oy:oy + 32, ox:ox + 32]
    if flip:
        out = out[:, ::-1]
    out = out.copy()
    if corner is not None:
        out[corner[0]:corner[0] + cut, corner[1]:corner[1] + cut] = fill
    return out


def decode(a: np.ndarray) -> dict:
    """Crop offset, flip and hole of augmented `coord_images` (uint8 NCHW) from their pixels."""
    n = len(a)
    hole = a[:, 2] == FILL[2]
    cut = hole.any((1, 2))
    first = hole.reshape(n, -1).argmax(1)
    assert (hole.sum((1, 2))[cut] == 64).all()
    rows = np.where(hole, -1, a[:, 0].astype(int))
    oy = rows[:, 16].max(1) - 12                       # row 16 reads source row oy + 12
    r0 = np.where(cut & (first // 32 == 0), 31, 0)     # a row the hole misses
    g16, g17 = a[np.arange(n), 1, r0, 16].astype(int), a[np.arange(n), 1, r0, 17].astype(int)
    flip = g17 < g16
    ox = np.where(flip, g16 - 11, g16 - 12)            # column 16 reads ox + 12, or ox + 11 flipped
    return {"oy": oy, "ox": ox, "flip": flip, "cut": cut, "cy": first // 32, "cx": first % 32}


def assert_uniform(values: np.ndarray, support: int, what: str):
    """`values` (ints) look uniform over 0..support-1: every value seen, chi-square not rejected."""
    counts = np.bincount(values, minlength=support)
    assert len(counts) == support and (counts > 0).all(), f"{what}: support {counts}"
    try:
        from scipy.stats import chisquare
    except ImportError:  # no scipy: a loose tolerance on the counts
        expected = len(values) / support
        assert np.abs(counts - expected).max() < 5 * np.sqrt(expected) + 1, f"{what}: {counts}"
    else:
        assert chisquare(counts).pvalue > 1e-3, f"{what}: {counts}"


def assert_same_distribution(a: np.ndarray, b: np.ndarray, support: int, what: str):
    ca, cb = np.bincount(a, minlength=support), np.bincount(b, minlength=support)
    assert len(ca) == len(cb) == support, what
    try:
        from scipy.stats import chi2_contingency
    except ImportError:
        pa, pb = ca / ca.sum(), cb / cb.sum()
        assert np.abs(pa - pb).max() < 0.03, f"{what}: {ca} vs {cb}"
    else:
        assert chi2_contingency(np.stack([ca, cb])).pvalue > 1e-3, f"{what}: {ca} vs {cb}"


# --- augment_batch: exact pixels ---------------------------------------------------------------

def test_every_output_matches_the_numpy_pipeline_for_its_parameters():
    x = random_images(64)
    out, p = augment_batch(nchw(x), gen(1), pad=4, cutout=8, fill=FILL, return_params=True)
    assert out.dtype == torch.uint8 and out.shape == (64, 3, 32, 32)
    for i in range(64):
        oy, ox = p["crop"][i].tolist()
        corner = p["cutout"][i].tolist() if p["cutout_applied"][i] else None
        want = reference(x[i], oy, ox, bool(p["flip"][i]), corner, FILL)
        np.testing.assert_array_equal(out[i].permute(1, 2, 0).numpy(), want)


def test_crop_only_is_the_slice_of_the_reflect_padded_image():
    i = np.arange(32 * 32).reshape(32, 32)
    x = np.stack([i % 256, i // 4 % 256, (i * 7) % 256], -1).astype(np.uint8)  # all distinct
    batch = np.repeat(x[None], 200, 0)
    out, p = augment_batch(nchw(batch), gen(2), pad=4, cutout=0, return_params=True)
    padded = np.pad(x, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    assert not p["cutout_applied"].any()
    for k in range(200):
        oy, ox = p["crop"][k].tolist()
        got = out[k].permute(1, 2, 0).numpy()
        if p["flip"][k]:
            got = got[:, ::-1]
        np.testing.assert_array_equal(got, padded[oy:oy + 32, ox:ox + 32])
        # and it is the only one of the 81 windows that matches
        hits = [(a, b) for a in range(9) for b in range(9)
                if np.array_equal(padded[a:a + 32, b:b + 32], got)]
        assert hits == [(oy, ox)]


def test_flipped_output_is_the_unflipped_one_reversed_along_width():
    x = nchw(random_images(1)).repeat(300, 1, 1, 1)
    out, p = augment_batch(x, gen(3), pad=0, cutout=0, return_params=True)
    assert (p["crop"] == 0).all()
    flip = p["flip"]
    assert 0 < int(flip.sum()) < 300
    assert torch.equal(out[~flip], x[~flip])
    assert torch.equal(out[flip], x[flip].flip(-1))


def test_cutout_is_one_8x8_fill_square_at_the_returned_corner_inside_the_image():
    x = nchw(coord_images(500))
    plain, _ = augment_batch(x, gen(4), pad=4, cutout=0, return_params=True)
    out, p = augment_batch(x, gen(4), pad=4, cutout=8, fill=FILL, return_params=True)
    assert p["cutout_applied"].all()
    fill = torch.tensor(FILL, dtype=torch.uint8).view(3, 1, 1)
    for k in range(500):
        cy, cx = p["cutout"][k].tolist()
        assert 0 <= cy <= 24 and 0 <= cx <= 24
        changed = (out[k] != plain[k]).any(0)
        ys, xs = torch.nonzero(changed, as_tuple=True)
        assert changed.sum() == 64
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == (cy, cy + 7, cx, cx + 7)
        assert (out[k][:, cy:cy + 8, cx:cx + 8] == fill).all()


def test_pixel_decoder_agrees_with_the_returned_parameters():
    out, p = augment_batch(nchw(coord_images(2000)), gen(5), fill=FILL, return_params=True)
    d = decode(out.numpy())
    np.testing.assert_array_equal(d["oy"], p["crop"][:, 0].numpy())
    np.testing.assert_array_equal(d["ox"], p["crop"][:, 1].numpy())
    np.testing.assert_array_equal(d["flip"], p["flip"].numpy())
    np.testing.assert_array_equal(d["cy"], p["cutout"][:, 0].numpy())
    np.testing.assert_array_equal(d["cx"], p["cutout"][:, 1].numpy())


def test_same_generator_seed_gives_the_same_batch():
    x = nchw(random_images(32))
    assert torch.equal(augment_batch(x, gen(7), fill=FILL), augment_batch(x, gen(7), fill=FILL))
    assert not torch.equal(augment_batch(x, gen(7), fill=FILL), augment_batch(x, gen(8), fill=FILL))


# --- augment_batch: distributions --------------------------------------------------------------

def test_parameter_distributions_over_20000_draws():
    x = torch.zeros((20000, 1, 32, 32), dtype=torch.uint8)
    _, p = augment_batch(x, gen(11), pad=4, cutout=8, fill=(1,), return_params=True)
    crop, cut = p["crop"].numpy(), p["cutout"].numpy()
    assert crop.min() == 0 and crop.max() == 8
    assert_uniform(crop[:, 0] * 9 + crop[:, 1], 81, "crop offsets")
    flips = int(p["flip"].sum())
    assert abs(flips - 10000) < 4 * 71, flips        # 4 sigma of Binomial(20000, 0.5)
    assert p["cutout_applied"].all()
    assert cut.min() == 0 and cut.max() == 24        # both ends reached, never past 24
    assert_uniform(cut[:, 0], 25, "cutout rows")
    assert_uniform(cut[:, 1], 25, "cutout columns")
    assert_uniform(cut[:, 0] * 25 + cut[:, 1], 625, "cutout corners")


def test_cutout_probability():
    x = torch.zeros((20000, 1, 32, 32), dtype=torch.uint8)
    _, p = augment_batch(x, gen(12), cutout_p=0.3, fill=(1,), return_params=True)
    assert abs(int(p["cutout_applied"].sum()) - 6000) < 4 * 65
    _, p = augment_batch(x[:1000], gen(12), cutout_p=0.0, fill=(1,), return_params=True)
    assert not p["cutout_applied"].any()


def test_same_distribution_as_the_albumentations_pipeline():
    n = 3000
    imgs = coord_images(n)
    t = train_transform(FILL_MEAN, STD)
    t.set_random_seed(0)
    xs = torch.stack([t(image=img)["image"] for img in imgs]).numpy()
    # Undo Normalize to get the uint8 pixels back.
    mean, std = np.array(FILL_MEAN).reshape(1, 3, 1, 1), np.array(STD).reshape(1, 3, 1, 1)
    alb = decode(np.round(xs * std * 255 + mean * 255).astype(np.uint8))
    fast = decode(augment_batch(nchw(imgs), gen(13), fill=FILL).numpy())
    for d in (alb, fast):
        assert d["cut"].all()
        assert set(d["oy"]) == set(d["ox"]) == set(range(9))
        assert set(d["cy"]) == set(d["cx"]) == set(range(25))
        assert abs(d["flip"].mean() - 0.5) < 0.04
    assert_same_distribution(alb["oy"] * 9 + alb["ox"], fast["oy"] * 9 + fast["ox"], 81, "crop")
    assert_same_distribution(alb["cy"], fast["cy"], 25, "cutout rows")
    assert_same_distribution(alb["cx"], fast["cx"], 25, "cutout columns")
    assert_same_distribution(alb["flip"].astype(int), fast["flip"].astype(int), 2, "flip")


# --- normalise ---------------------------------------------------------------------------------

def test_normalise_matches_eval_transform():
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    want = torch.stack([eval_transform(MEAN, STD)(image=img)["image"] for img in x])
    got = normalise(nchw(x), MEAN, STD)
    assert got.dtype == torch.float32 and got.shape == (4, 3, 32, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_mean_fill_normalises_to_about_zero():
    fill = torch.tensor(mean_fill(MEAN), dtype=torch.uint8).view(1, 3, 1, 1)
    assert normalise(fill, MEAN, STD).abs().max() < 0.01


# --- DeviceBatches -----------------------------------------------------------------------------

def indexed(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images that carry their own index (constant image: R = i % 200, G = i // 200)."""
    i = np.arange(n)
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[..., 0], x[..., 1] = (i % 200)[:, None, None], (i // 200)[:, None, None]
    return x, i.astype(np.int64)


def batches(db: DeviceBatches):
    return [(xb.clone(), yb.clone()) for xb, yb in db]


def device_batches(x, y, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                   **options) -> DeviceBatches:
    return DeviceBatches(x, y, GlobalBatches(len(y), batch_size, seed, rank, world), MEAN, STD,
                         CPU, **options)


def test_full_batches_only_and_each_index_at_most_once_per_epoch():
    x, y = indexed(10)
    db = device_batches(x, y, 4, seed=0)
    assert len(db) == 2
    out = batches(db)
    assert [len(b[1]) for b in out] == [4, 4]
    seen = torch.cat([b[1] for b in out]).tolist()
    assert len(set(seen)) == 8 and set(seen) <= set(range(10))
    assert out[0][0].dtype == torch.float32 and out[0][0].shape == (4, 3, 32, 32)
    assert out[0][1].dtype == torch.int64


@pytest.mark.parametrize("n,batch,world", [(11, 4, 2), (10, 5, 3), (40, 8, 4), (9, 3, 3)])
def test_the_ranks_split_each_global_batch_whatever_their_number(n, batch, world):
    x, y = indexed(n)
    for epoch in (0, 3):
        alone = device_batches(x, y, batch, seed=5)
        alone.set_epoch(epoch)
        parts = []
        for rank in range(world):
            db = device_batches(x, y, batch, seed=5, rank=rank, world=world)
            db.sampler.set_epoch(epoch)
            assert len(db) == len(alone) == n // batch
            parts.append([b.tolist() for _, b in db])
        for step, (_, whole) in enumerate(alone):  # the ranks' slices, in rank order
            assert sum((p[step] for p in parts), []) == whole.tolist()
            assert max(map(len, (p[step] for p in parts))) - min(
                map(len, (p[step] for p in parts))) <= 1


def test_epochs_reshuffle_and_seeds_reproduce():
    x, y = indexed(64)
    db = device_batches(x, y, 16, seed=3)
    e0 = batches(db)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(e0, batches(db)))
    db.set_epoch(1)
    e1 = batches(db)
    assert torch.cat([b[1] for b in e0]).tolist() != torch.cat([b[1] for b in e1]).tolist()
    again = device_batches(x, y, 16, seed=3)
    again.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(e1, batches(again)))
    other = device_batches(x, y, 16, seed=4)
    assert torch.cat([b[1] for b in e0]).tolist() != torch.cat([yb for _, yb in other]).tolist()


def test_labels_stay_with_their_images():
    x, y = indexed(300)
    # No augmentation: exactly eval_transform's output of the indexed image.
    for xb, yb in device_batches(x, y, 64, seed=0, augment=False):
        want = torch.stack([eval_transform(MEAN, STD)(image=x[i])["image"] for i in yb.tolist()])
        torch.testing.assert_close(xb, want, rtol=1e-5, atol=1e-5)
    # With crop/flip (no cutout) constant images stay constant: decode the index back.
    std = torch.tensor(STD).view(1, 3, 1, 1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    for xb, yb in device_batches(x, y, 64, seed=0, cutout_p=0.0):
        pix = torch.round((xb * std + mean) * 255).to(torch.int64)
        assert (pix == pix[:, :, :1, :1]).all()
        assert torch.equal(pix[:, 0, 0, 0] + 200 * pix[:, 1, 0, 0], yb)


def test_augmented_batches_have_one_mean_hole_each_and_channels_last():
    x, y = indexed(40)
    db = device_batches(x, y, 16, seed=0, channels_last=True)
    for xb, _ in db:
        assert xb.is_contiguous(memory_format=torch.channels_last)
        near_zero = (xb.abs() < 0.01).all(1)       # the mean fill normalises to ~0
        assert (near_zero.sum((1, 2)) == 64).all()


def test_device_evaluation_gives_the_albumentations_paths_predictions():
    """The same weights, the test set through albumentations' Normalize (a CPU DataLoader)
    and held on the device as uint8 (DeviceTestBatches): the same predictions, flip TTA too."""
    from raycifar.recipe.data import CifarArrays, TrainingData
    from raycifar.recipe.engine import evaluate, test_batches
    from raycifar.recipe.model import CustomResNet
    from raycifar.recipe.runtime import Runtime

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    data = TrainingData.of(CifarArrays(x, np.arange(40) % 10, x[:30], np.arange(30) % 10,
                                       [str(c) for c in range(10)]))
    torch.manual_seed(0)
    model = CustomResNet(10).eval()
    rt = Runtime(torch.device("cpu"))
    for rank in (0, 1):
        cpu_batches, cpu_idx = test_batches(data, rank, 2)
        dev_batches, dev_idx = test_batches(data, rank, 2, rt)
        np.testing.assert_array_equal(cpu_idx, dev_idx)
        for tta in (False, True):
            a = evaluate(model, cpu_batches, rt, tta)
            b = evaluate(model, dev_batches, rt, tta)
            assert torch.equal(a["probs"].argmax(1), b["probs"].argmax(1))
            assert torch.allclose(a["probs"], b["probs"], atol=1e-5)
            assert torch.equal(a["labels"], b["labels"]) and a["accuracy"] == b["accuracy"]
