"""Slice caches, slice datasets, augmentation and k-fold splits."""

from __future__ import annotations

import json
import os
import pickle
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from livseg.data import (
    Augmentation,
    SliceCache,
    SliceDataset,
    build_slice_cache,
    kfold_by_patient,
    load_splits,
    save_splits,
)
from livseg.data.lock import folder_lock
from livseg.data.volumes import build_volume_cache
from livseg.errors import InputError, LivsegError, OutputExistsError
from livseg.io import write_volume
from livseg.preprocess.pipeline import PreprocessSettings
from livseg.volume import Volume


@dataclass
class _Case:
    case_id: str
    image: Path
    label: Path | None


def _phantom(z=12, n=48, seed=0):
    """Body ellipse (soft tissue), liver ellipse on the patient's right, a tumour in the liver."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:z, :n, :n].astype(np.float32)
    img = np.full((z, n, n), -1000.0, np.float32)
    body = ((yy - n / 2) / (0.45 * n)) ** 2 + ((xx - n / 2) / (0.47 * n)) ** 2 < 1
    img[body] = 30.0
    liver = (
        (((yy - 0.45 * n) / (0.2 * n)) ** 2 + ((xx - 0.33 * n) / (0.17 * n)) ** 2 < 1)
        & (zz >= 3)
        & (zz <= z - 4)
    )
    img[liver] = 110.0
    tumour = ((yy - 0.45 * n) ** 2 + (xx - 0.33 * n) ** 2 + ((zz - z // 2) * 3) ** 2) < (
        0.07 * n
    ) ** 2
    img[tumour] = 40.0
    img += rng.normal(0, 10, img.shape).astype(np.float32)
    lab = np.zeros((z, n, n), np.uint8)
    lab[liver] = 1
    lab[tumour & liver] = 2
    return img, lab


def _write_case(folder: Path, cid: str, direction=None, seed=0, z=12, n=48, tumour=True) -> _Case:
    img, lab = _phantom(z, n, seed)
    if not tumour:
        lab[lab == 2] = 1
    d = np.eye(3) if direction is None else direction
    # store the arrays so that, after reorientation, they read as the LPS phantom
    vol_i = Volume.image(img, (3.0, 0.8, 0.8), (10.0, -5.0, 2.0))
    vol_l = Volume.label(lab, (3.0, 0.8, 0.8), (10.0, -5.0, 2.0))
    if direction is not None:
        flips = tuple(a for a in range(3) if d[a, a] < 0)
        # flipping array axes and negating the matching direction columns keeps the anatomy
        span = np.array([(s - 1) * sp for s, sp in zip(img.shape, (3.0, 0.8, 0.8), strict=True)])
        origin = np.array(vol_i.origin) + np.where(np.diag(d) < 0, span, 0.0)
        vol_i = Volume.image(np.flip(img, flips), vol_i.spacing, origin, d)
        vol_l = Volume.label(np.flip(lab, flips), vol_l.spacing, origin, d)
    folder.mkdir(parents=True, exist_ok=True)
    ip, lp = folder / f"{cid}_img.nii.gz", folder / f"{cid}_seg.nii.gz"
    write_volume(vol_i, ip)
    write_volume(vol_l, lp)
    return _Case(cid, ip, lp)


@pytest.fixture()
def two_cases(tmp_path):
    return [_write_case(tmp_path / "src", "a", seed=0), _write_case(tmp_path / "src", "b", seed=1)]


# --- settings -----------------------------------------------------------------------------------
def test_settings_defaults_key_and_roundtrip():
    s = PreprocessSettings("tumour", size=128)
    assert (s.foreground, s.margin, s.channels) == ("tumour", 5, 3)
    assert s.windows == ((0.0, 100.0), (-100.0, 200.0), (-100.0, 400.0))
    assert PreprocessSettings("densefcn_liver").windows == ((-100.0, 300.0),)
    assert PreprocessSettings("crunet").margin == 10
    assert PreprocessSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.key() == PreprocessSettings("tumour", size=128, margin=5).key()
    assert s.key() != PreprocessSettings("tumour", size=128, margin=4).key()
    assert s.key().startswith("tumour_s128_")
    assert PreprocessSettings("crunet", context=2).channels == 5
    with pytest.raises(LivsegError, match="valid: crunet"):
        PreprocessSettings("unet")
    with pytest.raises(LivsegError):
        PreprocessSettings("crunet", windows=((0, 1), (2, 3)))
    with pytest.raises(LivsegError):
        PreprocessSettings("crunet", dtype="int8")


# --- cache --------------------------------------------------------------------------------------
def test_build_cache_content(two_cases, tmp_path):
    s = PreprocessSettings("densefcn_liver", size=32, margin=1, weight_map=True)
    cache = build_slice_cache(two_cases, s, tmp_path / "cache")
    assert cache.root == tmp_path / "cache" / s.key()
    assert cache.case_ids == ["a", "b"]
    a = cache["a"]
    # liver on slices 3..8 of 12, margin 1 -> 2..9
    np.testing.assert_array_equal(a.slices, np.arange(2, 10))
    assert a.image.shape == (8, 1, 32, 32) and a.image.dtype == np.float32
    assert a.label.shape == (8, 32, 32) and a.label.dtype == np.uint8
    assert a.weight.shape == (8, 32, 32)
    assert isinstance(a.image, np.memmap)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    assert set(np.unique(a.label)) == {0, 1, 2}
    assert a.weight.min() >= 1.0 and a.weight.max() == pytest.approx(6.0)
    assert a.label[0].sum() == 0 and a.label[1].sum() > 0  # margin slice, then liver
    m = a.meta
    assert m["case_id"] == "a" and m["image"]["path"] == str(two_cases[0].image.resolve())
    assert m["input_shape"] == [12, 48, 48] and m["settings"] == s.to_dict()
    assert m["working_spacing"] == pytest.approx([3.0, 1.2, 1.2])
    assert len(cache) == 16 and cache.locate(9) == ("b", 1)
    assert cache.nbytes() > a.image.nbytes
    assert json.loads((cache.root / "settings.json").read_text()) == s.to_dict()
    assert SliceCache.open(s, tmp_path / "cache").case_ids == ["a", "b"]


def test_cache_reuse_new_settings_and_stale_sources(two_cases, tmp_path):
    root = tmp_path / "cache"
    s = PreprocessSettings("crunet", size=32, margin=0)
    c1 = build_slice_cache(two_cases, s, root)
    stamp = (c1.root / "a" / "image.npy").stat().st_mtime_ns
    c2 = build_slice_cache(two_cases, s, root)
    assert (c2.root / "a" / "image.npy").stat().st_mtime_ns == stamp  # reused, not rebuilt
    s16 = PreprocessSettings("crunet", size=32, margin=0, dtype="float16")
    c3 = build_slice_cache(two_cases, s16, root)
    assert c3.root != c1.root and c3["a"].image.dtype == np.float16
    np.testing.assert_allclose(c3["a"].image, c1["a"].image, atol=1e-3)
    # the source changes -> that case is rebuilt with the new content
    new = _write_case(tmp_path / "src2", "a", seed=5, z=10)
    os.replace(new.image, two_cases[0].image)
    os.replace(new.label, two_cases[0].label)
    c4 = build_slice_cache(two_cases, s, root)
    assert c4["a"].meta["input_shape"] == [10, 48, 48]
    assert c4["b"].meta == c1["b"].meta
    assert not [p for p in c4.root.iterdir() if p.name.startswith(".")]


def test_parallel_build_matches_serial_and_reports_progress(two_cases, tmp_path):
    s = PreprocessSettings("tumour", size=16, margin=2, crop_to_liver=True)
    calls = []

    def progress(iterable, total, desc):
        calls.append((total, desc))
        yield from iterable

    par = build_slice_cache(two_cases, s, tmp_path / "par", jobs=2, progress=progress)
    ser = build_slice_cache(two_cases, s, tmp_path / "ser", jobs=1)
    assert calls == [(2, "slice cache")]
    for cid in ("a", "b"):
        np.testing.assert_array_equal(par[cid].image, ser[cid].image)
        np.testing.assert_array_equal(par[cid].label, ser[cid].label)
    # picklable for DataLoader workers, memmaps reopened lazily after unpickling
    ser["a"].image  # noqa: B018  (opens the memmap)
    clone = pickle.loads(pickle.dumps(ser))
    assert not clone["a"]._arrays
    np.testing.assert_array_equal(clone["a"].label, ser["a"].label)


def test_interrupted_build_is_recovered(two_cases, tmp_path):
    s = PreprocessSettings("crunet", size=16, margin=0)
    root = tmp_path / "cache" / s.key()
    dead = root / f".tmp-a-{2**22 + 123}-deadbeef"  # an interrupted build's leftovers (no pid)
    dead.mkdir(parents=True)
    (root / "a").mkdir()  # a case folder without meta.json is incomplete
    (root / "a" / "image.npy").write_bytes(b"garbage")
    cache = build_slice_cache(two_cases, s, tmp_path / "cache")
    assert cache["a"].image.shape[0] == 6
    assert cache["a"].meta["case_id"] == "a"
    assert not dead.exists()


def _built_while_locked(build, folder: Path) -> tuple[bool, object]:
    """Run ``build()`` in a thread while this thread holds ``folder``'s lock; return whether
    it was still waiting (nothing built) after 0.3 s, and its result once released."""
    result = {}
    with folder_lock(folder):
        t = threading.Thread(target=lambda: result.setdefault("out", build()))
        t.start()
        time.sleep(0.3)
        waited = t.is_alive() and not any(p.is_dir() for p in folder.iterdir())
    t.join(timeout=60)
    return waited, result["out"]


def test_slice_cache_builders_take_turns(two_cases, tmp_path):
    s = PreprocessSettings("crunet", size=16, margin=0)
    folder = tmp_path / "cache" / s.key()
    waited, cache = _built_while_locked(
        lambda: build_slice_cache(two_cases, s, tmp_path / "cache"), folder
    )
    assert waited  # a second builder waits for the first instead of racing it
    assert cache.case_ids == ["a", "b"] and cache["a"].image.shape[0] == 6


def test_coarse_volume_cache_builders_take_turns(two_cases, tmp_path):
    s = PreprocessSettings("coarse", spacing_mm=4.0, windows=((-250.0, 350.0),))
    folder = tmp_path / "coarse" / s.key()
    waited, cache = _built_while_locked(
        lambda: build_volume_cache(two_cases, tmp_path / "coarse", s), folder
    )
    assert waited
    # 12 x 48 x 48 at 3 x 0.8 x 0.8 mm -> 9 x 10 x 10 at 4 mm (36 / 4, 38.4 / 4 rounded)
    assert cache.images["a"].shape == (9, 10, 10) and cache.labels["b"].max() >= 1


def test_cache_context_slices_replicate_ends(tmp_path):
    cases = [_write_case(tmp_path / "src", "a")]
    base = build_slice_cache(
        cases, PreprocessSettings("crunet", size=24, foreground="all"), tmp_path / "c"
    )
    ctx = build_slice_cache(
        cases, PreprocessSettings("crunet", size=24, foreground="all", context=1), tmp_path / "c"
    )
    b, c = base["a"].image[:, 0], ctx["a"].image
    assert c.shape == (12, 3, 24, 24)
    np.testing.assert_array_equal(c[:, 1], b)  # centre channel = the slice itself
    np.testing.assert_array_equal(c[1:, 0], b[:-1])  # slice above
    np.testing.assert_array_equal(c[:-1, 2], b[1:])  # slice below
    np.testing.assert_array_equal(c[0, 0], b[0])  # replicated at the ends
    np.testing.assert_array_equal(c[-1, 2], b[-1])


def test_cache_tumour_crop(tmp_path):
    cases = [_write_case(tmp_path / "src", "a", n=64)]
    s = PreprocessSettings("tumour", size=32, crop_to_liver=True, crop_margin=2, margin=1)
    cache = build_slice_cache(cases, s, tmp_path / "c")
    a = cache["a"]
    y0, y1, x0, x1 = a.meta["crop_box"]
    assert y1 - y0 == x1 - x0 < 64  # square and smaller than the slice
    assert a.image.shape[1] == 3 and a.n_slices == len(a.slices) >= 3
    assert (a.label == 2).any() and (a.label == 1).any()
    # the liver fills much of the crop (it is ~10 % of the uncropped slice)
    assert (a.label >= 1).mean(axis=(1, 2)).max() > 0.4


def test_cache_is_canonical_whatever_the_file_orientation(tmp_path):
    s = PreprocessSettings("tumour", size=24, margin=1)
    lps = build_slice_cache([_write_case(tmp_path / "s1", "a")], s, tmp_path / "c1")
    ras = build_slice_cache(
        [_write_case(tmp_path / "s2", "a", direction=np.diag([-1.0, -1, -1]))], s, tmp_path / "c2"
    )
    assert ras["a"].meta["reorientation"]["flip"] == [True, True, True]
    np.testing.assert_array_equal(ras["a"].label, lps["a"].label)
    np.testing.assert_allclose(ras["a"].image, lps["a"].image, atol=1e-6)
    np.testing.assert_array_equal(ras["a"].slices, lps["a"].slices)


def test_case_without_foreground_gives_no_slices(tmp_path):
    cases = [_write_case(tmp_path / "s", "a"), _write_case(tmp_path / "s", "none", tumour=False)]
    cache = build_slice_cache(cases, PreprocessSettings("tumour", size=16), tmp_path / "c")
    assert cache["none"].n_slices == 0 and cache["none"].image.shape == (0, 3, 16, 16)
    assert len(cache) == cache["a"].n_slices > 0
    assert all(cache.locate(i)[0] == "a" for i in range(len(cache)))
    assert len(SliceDataset(cache, case_ids=["none"])) == 0


def test_cache_errors(two_cases, tmp_path):
    s = PreprocessSettings("crunet", size=16)
    with pytest.raises(InputError, match="no label"):
        build_slice_cache([_Case("x", two_cases[0].image, None)], s, tmp_path / "c")
    with pytest.raises(InputError, match="duplicate"):
        build_slice_cache([two_cases[0], two_cases[0]], s, tmp_path / "c")
    other = _write_case(tmp_path / "o", "o", z=9)
    with pytest.raises(InputError, match="label shape") as err:
        build_slice_cache([_Case("m", two_cases[0].image, other.label)], s, tmp_path / "c")
    assert str(other.label) in str(err.value)
    with pytest.raises(InputError, match="not in this slice cache"):
        SliceCache(build_slice_cache(two_cases, s, tmp_path / "c").root, ["zz"])


# --- dataset ------------------------------------------------------------------------------------
def test_slice_dataset_items_and_dataloader(two_cases, tmp_path):
    s = PreprocessSettings("densefcn_liver", size=32, margin=1, weight_map=True)
    cache = build_slice_cache(two_cases, s, tmp_path / "c")
    ds = SliceDataset(cache, case_ids=["b"])
    assert len(ds) == 8
    item = ds[3]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 32, 32)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (32, 32)
    assert item["weight"].dtype == torch.float32
    assert item["case_id"] == "b" and item["slice"] == 5
    np.testing.assert_array_equal(item["label"].numpy(), cache["b"].label[3])
    with pytest.raises(IndexError):
        ds[8]
    aug = SliceDataset(cache, augment=Augmentation(), seed=4)
    loader = torch.utils.data.DataLoader(aug, batch_size=4, num_workers=1, shuffle=False)
    batches = list(loader)
    assert sum(b["image"].shape[0] for b in batches) == 16
    np.testing.assert_array_equal(batches[0]["image"][2].numpy(), aug[2]["image"].numpy())
    aug.set_epoch(1)
    assert not torch.equal(aug[2]["image"], batches[0]["image"][2])


def test_oversampling_weights(two_cases, tmp_path):
    cache = build_slice_cache(
        two_cases, PreprocessSettings("tumour", size=16, margin=3), tmp_path / "c"
    )
    ds = SliceDataset(cache)
    fg = ds.foreground_flags("tumour")
    assert 0 < fg.sum() < len(ds)
    w = ds.sample_weights("tumour", fraction=0.7)
    assert w.sum() == pytest.approx(1.0) and w[fg].sum() == pytest.approx(0.7)
    sampler = ds.make_sampler(
        "tumour", 0.7, num_samples=2000, generator=torch.Generator().manual_seed(0)
    )
    drawn = np.fromiter(iter(sampler), dtype=np.int64)
    assert abs(fg[drawn].mean() - 0.7) < 0.05


# --- augmentation -------------------------------------------------------------------------------
def _blob_triple(n=64):
    yy, xx = np.mgrid[:n, :n]
    lab = np.zeros((n, n), np.uint8)
    lab[((yy - 30) / 14) ** 2 + ((xx - 20) / 10) ** 2 < 1] = 1
    lab[((yy - 30) / 4) ** 2 + ((xx - 22) / 4) ** 2 < 1] = 2
    img = np.stack([lab / 2.0, 1 - lab / 2.0, np.ones((n, n))]).astype(np.float32)
    weight = (1.0 + lab).astype(np.float32)
    return img, lab, weight


def test_augmentation_deterministic_and_label_safe():
    img, lab, w = _blob_triple()
    aug = Augmentation(elastic_prob=1.0, spatial_prob=1.0, intensity_prob=0.0)
    a1 = aug(img, lab, w, np.random.default_rng(7))
    a2 = aug(img, lab, w, np.random.default_rng(7))
    a3 = aug(img, lab, w, np.random.default_rng(8))
    for x, y in zip(a1, a2, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a1[1], a3[1])
    out_img, out_lab, out_w = a1
    assert out_img.shape == img.shape and out_img.dtype == np.float32
    assert out_lab.dtype == np.uint8 and set(np.unique(out_lab)) <= {0, 1, 2}
    # one geometry for all: the image channels (= label / 2) agree with the label almost everywhere
    agree = np.abs(out_img[0] * 2 - out_lab) < 0.5
    assert agree.mean() > 0.97
    inside = out_img[2] > 1.0 - 1e-5  # samples from within the input slice (outside: image 0)
    assert 0.7 < inside.mean() < 1.0
    np.testing.assert_allclose(out_img[1][inside], 1 - out_img[0][inside], atol=1e-6)
    assert 1.0 - 1e-5 <= out_w.min() and out_w.max() <= 3.0 + 1e-5
    assert (out_lab == 1).sum() > 0.7 * (lab == 1).sum()


def test_augmentation_off_is_identity_and_no_default_flip():
    img, lab, w = _blob_triple()
    off = Augmentation(spatial_prob=0, elastic_prob=0, intensity_prob=0)
    out = off(img, lab, w, np.random.default_rng(0))
    np.testing.assert_array_equal(out[0], img)
    np.testing.assert_array_equal(out[1], lab)
    # the liver (left half of the image = patient right) stays left without flip_lr
    aug = Augmentation(intensity_prob=0)
    for seed in range(10):
        _, la, _ = aug(img, lab, None, np.random.default_rng(seed))
        cols = np.nonzero(la)[1]
        assert cols.mean() < 32
    flip = Augmentation(
        flip_lr=True, rotation_deg=0, scale=(1, 1), translation=0, elastic_prob=0, intensity_prob=0
    )
    sides = {
        np.nonzero(flip(img, lab, None, np.random.default_rng(s))[1])[1].mean() > 32
        for s in range(12)
    }
    assert sides == {True, False}


def test_augmentation_intensity_jitter_range():
    img, lab, _ = _blob_triple()
    aug = Augmentation(spatial_prob=0, elastic_prob=0, intensity_prob=1.0, noise_std=0.05)
    out, la, _ = aug(img, lab, None, np.random.default_rng(1))
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not np.array_equal(out, img)
    np.testing.assert_array_equal(la, lab)
    with pytest.raises(ValueError):
        Augmentation(scale=(1.2, 0.9))


# --- splits -------------------------------------------------------------------------------------
def test_kfold_by_patient_partitions_and_groups(tmp_path):
    ids = [f"c{i}" for i in range(11)]
    folds = kfold_by_patient(ids, 3, seed=1)
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == sorted(ids)
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"]) == sorted(ids)
        assert len(f["val"]) in (3, 4)
    assert kfold_by_patient(ids[::-1], 3, seed=1) == folds  # order independent
    assert kfold_by_patient(ids, 3, seed=2) != folds
    patient = {c: f"p{int(c[1:]) // 2}" for c in ids}  # c0,c1 -> p0 ...
    grouped = kfold_by_patient(ids, 4, patient_of=patient)
    for f in grouped:
        assert {patient[c] for c in f["val"]}.isdisjoint({patient[c] for c in f["train"]})
    assert kfold_by_patient(ids, 4, patient_of=patient.__getitem__) == grouped
    with pytest.raises(LivsegError, match="exceeds"):
        kfold_by_patient(ids, 7, patient_of=patient)  # 6 patients
    with pytest.raises(LivsegError):
        kfold_by_patient(ids, 1)
    with pytest.raises(LivsegError, match="duplicate"):
        kfold_by_patient(["a", "a", "b"], 2)


def test_splits_json_roundtrip(tmp_path):
    folds = kfold_by_patient(["a", "b", "c", "d", "e"], 5, seed=3)
    path = save_splits(folds, tmp_path / "splits.json", seed=3)
    assert load_splits(path) == folds
    assert json.loads(path.read_text())["seed"] == 3
    with pytest.raises(OutputExistsError):
        save_splits(folds, path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"folds": [{"train": ["a"], "val": ["a"]}]}))
    with pytest.raises(InputError, match="both train and val"):
        load_splits(bad)
    with pytest.raises(InputError, match="not found"):
        load_splits(tmp_path / "missing.json")


# --- real data ----------------------------------------------------------------------------------
def test_real_lits_case_cache(lits_dir, tmp_path):
    """lits volume-3 (44 slices, 0.81 mm, LPS) through the CR-U-Net and tumour caches at 128/64."""
    import nibabel as nib

    case = _Case("lits-3", lits_dir / "volume-3.nii.gz", lits_dir / "segmentation-3.nii.gz")
    ref = np.asarray(nib.load(case.label).dataobj)
    s = PreprocessSettings("crunet", size=128)
    cache = build_slice_cache([case], s, tmp_path / "c")
    c = cache["lits-3"]
    assert c.meta["reorientation"] == {"perm": [0, 1, 2], "flip": [False, False, False]}
    liver_z = np.flatnonzero((ref >= 1).any(axis=(0, 1)))
    expect = np.arange(max(liver_z[0] - 10, 0), min(liver_z[-1] + 11, ref.shape[2]))
    np.testing.assert_array_equal(c.slices, expect)
    assert c.image.shape == (expect.size, 1, 128, 128)
    assert 0.0 <= c.image.min() and c.image.max() <= 1.0
    # liver pixels survive the 512 -> 128 nearest resize in proportion to the area (x 1/16)
    ratio = (c.label >= 1).sum() * 16 / (ref >= 1).sum()
    assert abs(ratio - 1) < 0.03
    # the liver lies on the patient's right = the image's left half in the canonical LPS view
    assert np.nonzero(c.label >= 1)[2].mean() < 64
    t = build_slice_cache(
        [case], PreprocessSettings("tumour", size=64, crop_to_liver=True), tmp_path / "c"
    )["lits-3"]
    tum_z = np.flatnonzero((ref == 2).any(axis=(0, 1)))
    assert t.slices[0] == max(tum_z[0] - 5, 0) and t.image.shape[1:] == (3, 64, 64)
    assert (t.label == 2).any() and 0.0 <= t.image.min() and t.image.max() <= 1.0


# --- contrast-phase shift of the 2-D augmentation ----------------------------------------------


def _phase_only(**kw) -> Augmentation:
    return Augmentation(spatial_prob=0.0, elastic_prob=0.0, intensity_prob=0.0, **kw)


def test_phase_shift_moves_liver_and_lesion_by_hu_over_window_width():
    label = np.zeros((8, 8), np.int64)
    label[2:6, 2:6] = 1
    label[3:5, 3:5] = 2
    image = np.full((3, 8, 8), 0.5, np.float32)
    aug = _phase_only(phase_prob=1.0, phase_hu=40.0, window_widths_hu=(100.0, 300.0, 500.0))
    out, lab, _ = aug(image, label, None, np.random.default_rng(3))
    assert np.array_equal(lab, label)
    shift = out - image
    assert np.allclose(shift[:, label == 0], 0.0)  # the rest of the body is untouched
    liver = shift[:, (label == 1)][:, 0]
    lesion = shift[:, (label == 2)][:, 0]
    # one HU shift per region, in each channel's units: d / width
    assert np.allclose(liver * [100.0, 300.0, 500.0], liver[0] * 100.0, atol=1e-4)
    assert 0 < abs(liver[0] * 100.0) <= 40.0
    d_lesion = lesion[0] * 100.0 - liver[0] * 100.0  # lesions are liver too: both shifts add
    assert 0 < abs(d_lesion) <= 40.0
    assert np.allclose(lesion * [100.0, 300.0, 500.0], lesion[0] * 100.0, atol=1e-4)
    # the same HU drawn again with the same generator
    again, _, _ = aug(image, label, None, np.random.default_rng(3))
    assert np.array_equal(out, again)


def test_phase_shift_repeats_the_window_widths_for_each_context_slice():
    # 3 windows x 3 context slices = 9 channels, offset-major: widths 100, 300, 500 three times
    label = np.zeros((8, 8), np.int64)
    label[2:6, 2:6] = 1
    image = np.full((9, 8, 8), 0.5, np.float32)
    aug = _phase_only(phase_prob=1.0, phase_hu=40.0, window_widths_hu=(100.0, 300.0, 500.0))
    out, _, _ = aug(image, label, None, np.random.default_rng(3))
    liver = (out - image)[:, 4, 4]
    hu = liver[0] * 100.0
    assert 0 < abs(hu) <= 40.0
    np.testing.assert_allclose(liver, hu / np.tile([100.0, 300.0, 500.0], 3), atol=1e-6)
    with pytest.raises(ValueError, match="2 window widths do not divide the image's 9"):
        _phase_only(phase_prob=1.0, phase_hu=40.0, window_widths_hu=(100.0, 300.0))(
            image, label, None, np.random.default_rng(3)
        )


def test_phase_shift_off_draws_nothing():
    # phase_hu = 0 (the default) leaves the random stream of the other transforms unchanged
    image = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    label = np.zeros((16, 16), np.int64)
    label[4:12, 4:12] = 1
    a = Augmentation()(image, label, None, np.random.default_rng(5))
    b = Augmentation(phase_prob=0.9, window_widths_hu=(100.0,))(
        image, label, None, np.random.default_rng(5)
    )
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError):
        Augmentation(phase_hu=-1.0)


# --- synthetic lesions of the 2-D augmentation -------------------------------------------------


def _liver_slice() -> tuple[np.ndarray, np.ndarray]:
    """A 64 x 64 slice: a liver disc of radius 24 (label 1) holding a real lesion (label 2)."""
    yy, xx = np.mgrid[:64, :64]
    label = np.zeros((64, 64), np.int64)
    label[(yy - 32) ** 2 + (xx - 32) ** 2 <= 24**2] = 1
    label[(yy - 32) ** 2 + (xx - 20) ** 2 <= 3**2] = 2
    return np.full((2, 64, 64), 0.5, np.float32), label


def test_synthetic_lesions_are_tumour_inside_the_liver_at_the_drawn_contrast():
    image, label = _liver_slice()
    aug = _phase_only(
        synth_prob=1.0,
        synth_count=1,
        synth_radius_px=(4.0, 6.0),
        synth_hu=(-40.0, -40.0),
        window_widths_hu=(100.0, 400.0),
    )
    out, lab, _ = aug(image, label, None, np.random.default_rng(0))
    new = (lab == 2) & (label == 1)
    assert new.sum() > 30  # one lesion of radius >= 4 px (~50 px)
    assert np.array_equal(lab[label != 1], label[label != 1])  # outside the liver, real lesion kept
    assert set(np.unique(lab)) == {0, 1, 2}
    shift = out - image
    assert np.allclose(shift[:, label == 0], 0.0)  # nothing painted outside the liver
    # every painted pixel is darker, by -40 HU x (1 +- 0.3) x soft edge, in each channel's units
    core = shift[0][new]
    assert core.max() < 0 and core.min() >= -0.4 * 1.3 - 1e-6
    assert np.median(core) < -0.2
    np.testing.assert_allclose(shift[0] * 100.0, shift[1] * 400.0, atol=1e-4)  # same HU
    again, lab2, _ = aug(image, label, None, np.random.default_rng(0))
    assert np.array_equal(out, again) and np.array_equal(lab, lab2)


def test_synthetic_lesion_contrast_avoids_the_isodense_gap():
    from livseg.data.synth import _contrast

    rng = np.random.default_rng(1)
    d = np.array([_contrast((-80.0, 40.0), 15.0, rng) for _ in range(4000)])
    assert d.min() >= -80.0 and d.max() <= 40.0 and not np.any(np.abs(d) < 15.0)
    # uniform over [-80, -15] and [15, 40]: 65 of 90 HU of the range are hypodense
    assert abs(np.mean(d < 0) - 65 / 90) < 0.03
    with pytest.raises(ValueError, match="synth_hu"):
        Augmentation(synth_hu=(-10.0, 10.0), synth_min_contrast_hu=15.0)


def test_synthetic_lesions_need_liver_and_off_draws_nothing():
    image, label = _liver_slice()
    aug = _phase_only(synth_prob=1.0, window_widths_hu=(100.0, 400.0))
    empty = np.zeros_like(label)
    out, lab, _ = aug(image, empty, None, np.random.default_rng(0))
    assert np.array_equal(out, image) and np.array_equal(lab, empty)
    # synth_prob = 0 (the default) leaves the random stream of the other transforms unchanged
    a = Augmentation()(image, label, None, np.random.default_rng(5))
    b = Augmentation(synth_count=2, window_widths_hu=(100.0,))(
        image, label, None, np.random.default_rng(5)
    )
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
