"""Each augmentation step checked for its effect on known images, not only shapes."""

import numpy as np

from raycifar.recipe.transforms import eval_transform, train_transform

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def ramp_image() -> np.ndarray:
    """Every pixel distinct, so a crop's position can be located exactly."""
    i = np.arange(32 * 32).reshape(32, 32)
    return np.stack([i % 256, i // 4 % 256, (i * 7) % 256], -1).astype(np.uint8)


def steps():
    t = train_transform(MEAN, STD)
    return {type(s).__name__: s for s in t.transforms}


def test_pipeline_order():
    assert list(steps()) == ["PadIfNeeded", "RandomCrop", "HorizontalFlip", "CoarseDropout",
                             "Normalize", "ToTensorV2"]


def test_pad_is_4_pixel_reflection():
    img = ramp_image()
    out = steps()["PadIfNeeded"](image=img)["image"]
    assert out.shape == (40, 40, 3)
    np.testing.assert_array_equal(out, np.pad(img, ((4, 4), (4, 4), (0, 0)), mode="reflect"))


def test_random_crop_is_a_32_window_of_the_padded_image_at_all_81_offsets():
    padded = np.pad(ramp_image(), ((4, 4), (4, 4), (0, 0)), mode="reflect")
    crop = steps()["RandomCrop"]
    crop.set_random_seed(0)
    seen = set()
    for _ in range(2000):
        out = crop(image=padded)["image"]
        assert out.shape == (32, 32, 3)
        hits = [(y, x) for y in range(9) for x in range(9)
                if np.array_equal(padded[y:y + 32, x:x + 32], out)]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) == 81


def test_flip_mirrors_about_half_the_time():
    img = ramp_image()
    flip = steps()["HorizontalFlip"]
    flip.set_random_seed(0)
    flipped = 0
    for _ in range(1000):
        out = flip(image=img)["image"]
        assert np.array_equal(out, img) or np.array_equal(out, img[:, ::-1])
        flipped += np.array_equal(out, img[:, ::-1])
    assert 430 < flipped < 570


def test_cutout_blanks_one_8x8_square_with_the_mean_on_every_image():
    img = np.full((32, 32, 3), 3, np.uint8)
    fill = np.array([round(m * 255) for m in MEAN], np.uint8)
    cut = steps()["CoarseDropout"]
    cut.set_random_seed(0)
    for _ in range(200):
        out = cut(image=img)["image"]
        mask = (out != img).any(-1)
        ys, xs = np.nonzero(mask)
        assert mask.sum() == 64
        assert ys.max() - ys.min() == 7 and xs.max() - xs.min() == 7
        assert (out[mask] == fill).all()


def test_full_train_pipeline_outputs_normalised_chw_tensor_with_zeroed_cutout():
    img = np.full((32, 32, 3), 3, np.uint8)
    t = train_transform(MEAN, STD)
    t.set_random_seed(1)
    x = t(image=img)["image"]
    assert tuple(x.shape) == (3, 32, 32) and str(x.dtype) == "torch.float32"
    near_zero = (x.abs() < 0.02).all(0)  # the mean fill normalises to ~0
    assert near_zero.sum() == 64
    expected = (3 / 255 - np.array(MEAN)) / np.array(STD)
    other = x[:, ~near_zero]
    np.testing.assert_allclose(other.mean(1).numpy(), expected, rtol=1e-4)


def test_eval_is_normalise_only():
    img = ramp_image()
    x = eval_transform(MEAN, STD)(image=img)["image"].numpy()
    want = ((img / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)
