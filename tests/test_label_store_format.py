"""Label store format 2 (row files): round trips, reduced precision within its hand-computed bound, old (orbax)
stores still readable, checksums, atomic commits."""

import json

import numpy as np
import pytest

from mll_jax.labelling import layout
from mll_jax.labelling import LabelPrecisionError, LabelStore, LabelStoreCorruptError, quantisation_bound

NODES = [f"n{i:08d}" for i in range(1, 41)]


def _labels(seed=0, n=len(NODES), h=7):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, h)) * rng.choice([1e-6, 0.1, 3.0, 40.0], size=(n, 1))).astype(np.float32)
    x[0, :4] = [0.0, -0.0, 1e-30, -6.5e4][:h]  # zeros, a float16 underflow, near the float16 limit
    return x


def _meta(store, m):
    return json.loads((store.model_dir(m) / "meta.json").read_text())


def test_float32_round_trip_is_exact_and_reads_only_the_asked_rows(tmp_path):
    store = LabelStore(tmp_path / "s")
    x = _labels()
    store.commit("a/b c", NODES, x, delta=0.5, head_names=list("abcdefg"), extra={"num_images": {NODES[3]: 2}},
                 fingerprint="fp")
    fresh = LabelStore(tmp_path / "s")
    want = [NODES[5], NODES[0], NODES[39], NODES[5], NODES[6]]  # unordered, repeated, consecutive rows
    got = fresh.read("a/b c", want)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x[[5, 0, 39, 5, 6]])
    assert np.signbit(fresh.read("a/b c", [NODES[0]])[0, 1])  # -0.0 kept bit for bit
    nodes, full = fresh.read_all("a/b c")
    assert nodes == NODES and full.dtype == np.float32
    np.testing.assert_array_equal(full, x)
    info = fresh.info("a/b c")
    assert info["format"] == "mll_jax.labels/2" and info["dtype"] == "float32"
    assert info["head_names"] == list("abcdefg") and info["num_images"] == {NODES[3]: 2}
    assert fresh.fingerprint("a/b c") == "fp" and fresh.nodes("a/b c") == NODES
    meta = _meta(fresh, "a/b c")
    assert (fresh.model_dir("a/b c") / (meta["checkpoint"] + ".rows")).stat().st_size == len(NODES) * (7 * 4 + 4)
    fresh.check("a/b c")


@pytest.mark.parametrize("dtype,u,eta,itemsize", [("float16", 2.0 ** -11, 2.0 ** -25, 2),
                                                  ("bfloat16", 2.0 ** -8, 2.0 ** -134, 2)])
def test_reduced_precision_within_the_rounding_bound(tmp_path, dtype, u, eta, itemsize):
    x = _labels(1)
    store = LabelStore(tmp_path / "s", dtype=dtype)
    store.commit("m", NODES, x)
    got = LabelStore(tmp_path / "s").read_all("m")[1]
    assert got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - x.astype(np.float64))
    bound = u * np.abs(x.astype(np.float64)) + eta  # round to nearest: half a unit in the last place
    assert np.all(err <= bound)
    np.testing.assert_array_equal(quantisation_bound(x, dtype), bound)
    assert np.max(err / bound) > 0.5  # the bound is nearly attained: the rows really are rounded
    meta = _meta(store, "m")
    assert meta["dtype"] == dtype
    assert (store.model_dir("m") / (meta["checkpoint"] + ".rows")).stat().st_size == len(NODES) * (7 * itemsize + 4)
    np.testing.assert_array_equal(store.read("m", [NODES[9], NODES[2]]), got[[9, 2]])


def test_reduced_precision_hand_cases(tmp_path):
    # float16 has 10 fraction bits: spacing 2^-10 on [1, 2), 2 on [2048, 4096); ties go to the even neighbour.
    # bfloat16 has 7: spacing 2^-7 on [1, 2).
    x = np.array([[1 + 2 ** -12, 1 + 3 * 2 ** -12, 2049.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.0]], np.float32)
    want16 = [1.0, 1 + 2 ** -10, 2048.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.0]
    want_b16 = [1.0, 1.0, 2048.0, 1.0, 1 + 2 ** -6, 3.0]
    for dtype, want in (("float16", want16), ("bfloat16", want_b16)):
        store = LabelStore(tmp_path / dtype, dtype=dtype)
        store.commit("m", ["n1"], x)
        np.testing.assert_array_equal(store.read("m", ["n1"])[0], np.array(want, np.float32))


def test_float16_overflow_and_bad_options_are_refused(tmp_path):
    store = LabelStore(tmp_path / "s", dtype="float16")
    x = np.zeros((2, 3), np.float32)
    x[1, 2] = 70000.0
    with pytest.raises(LabelPrecisionError, match=r"model 'm' reach \|70000\|.*largest float16"):
        store.commit("m", ["a", "b"], x)
    assert "m" not in store
    with pytest.raises(ValueError, match="label dtype must be one of"):
        LabelStore(tmp_path / "s", dtype="int8")
    with pytest.raises(ValueError, match="format 1 .* float32 only"):
        LabelStore(tmp_path / "s", dtype="float16", format=1)
    with pytest.raises(ValueError, match="format must be 1"):
        LabelStore(tmp_path / "s", format=3)


def test_old_orbax_stores_stay_readable_and_are_replaced_on_recommit(tmp_path):
    old = LabelStore(tmp_path / "s", format=1)
    x, y = _labels(2), _labels(3, n=10, h=4)
    old.commit("old", NODES, x, head_names=list("abcdefg"))
    new = LabelStore(tmp_path / "s")  # default: format 2 writer, reads both
    new.commit("new", NODES[:10], y)
    assert new.model_ids() == ["new", "old"] and new.damaged_models() == {}
    assert _meta(new, "old")["format"] == "mll_jax.labels/1" and _meta(new, "new")["format"] == "mll_jax.labels/2"
    np.testing.assert_array_equal(new.read("old", [NODES[7], NODES[1]]), x[[7, 1]])
    np.testing.assert_array_equal(new.read_all("old")[1], x)
    assert new.info("old")["head_names"] == list("abcdefg")
    new.check("old")
    ckpt = new.model_dir("old") / _meta(new, "old")["checkpoint"]
    assert ckpt.is_dir()
    new.commit("old", NODES, x + 1)  # relabelling rewrites it in format 2 and removes the checkpoint
    assert _meta(new, "old")["format"] == "mll_jax.labels/2" and not ckpt.exists()
    np.testing.assert_array_equal(new.read("old", [NODES[7]]), x[[7]] + 1)


def test_unknown_format_is_a_clear_error(tmp_path):
    store = LabelStore(tmp_path / "s")
    store.commit("m", NODES, _labels())
    f = store.model_dir("m") / "meta.json"
    meta = json.loads(f.read_text())
    f.write_text(json.dumps({**meta, "format": "mll_jax.labels/9"}))
    with pytest.raises(LabelStoreCorruptError, match=r"unknown label format 'mll_jax.labels/9'"):
        LabelStore(tmp_path / "s").read("m", [NODES[0]])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_damaged_rows_are_detected(tmp_path, dtype):
    store = LabelStore(tmp_path / "s", dtype=dtype)
    x = _labels(4)
    store.commit("m", NODES, x)
    store.commit("other", NODES, x)
    meta = _meta(store, "m")
    f = store.model_dir("m") / (meta["checkpoint"] + ".rows")
    rec = 7 * (4 if dtype == "float32" else 2) + 4
    data = bytearray(f.read_bytes())
    data[12 * rec + 3] ^= 0x10  # one bit of row 12's values
    f.write_bytes(bytes(data))
    fresh = LabelStore(tmp_path / "s")
    with pytest.raises(LabelStoreCorruptError, match=r"\.rows of model 'm' is damaged \(checksum mismatch in row 12"):
        fresh.read("m", [NODES[3], NODES[12]])
    ok = fresh.read("m", [NODES[11], NODES[13]])  # the intact rows stay readable
    np.testing.assert_array_equal(ok, fresh.read("other", [NODES[11], NODES[13]]))
    with pytest.raises(LabelStoreCorruptError, match="label checksum mismatch"):
        fresh.read_all("m")
    with pytest.raises(LabelStoreCorruptError):
        fresh.check("m")
    fresh.check("other")
    data[12 * rec + 3] ^= 0x10
    data[20 * rec + rec - 1] ^= 0x01  # row 20's stored checksum
    f.write_bytes(bytes(data))
    with pytest.raises(LabelStoreCorruptError, match="checksum mismatch in row 20"):
        fresh.read("m", [NODES[20]])
    f.write_bytes(bytes(data[:-5]))  # truncated
    with pytest.raises(LabelStoreCorruptError, match=r"size \d+ bytes, expected"):
        fresh.read("m", [NODES[0]])
    f.unlink()
    with pytest.raises(LabelStoreCorruptError, match="missing"):
        fresh.read("m", [NODES[0]])


def test_rows_swapped_within_a_file_are_detected(tmp_path):
    store = LabelStore(tmp_path / "s")
    store.commit("m", NODES, _labels(5))
    f = store.model_dir("m") / (_meta(store, "m")["checkpoint"] + ".rows")
    rec = 7 * 4 + 4
    data = bytearray(f.read_bytes())
    data[0:rec], data[rec:2 * rec] = data[rec:2 * rec], data[0:rec]  # records intact, rows exchanged
    f.write_bytes(bytes(data))
    with pytest.raises(LabelStoreCorruptError, match="checksum mismatch in row 0"):
        LabelStore(tmp_path / "s").read("m", [NODES[0]])


def test_shared_node_list_still_checks_each_models_index(tmp_path):
    store = LabelStore(tmp_path / "s")
    for m in ("a", "b"):
        store.commit(m, NODES, _labels(6))
    f = store.model_dir("b") / _meta(store, "b")["index"]
    doc = json.loads(f.read_text())
    doc["head_names"] = ["x"] * 7
    f.write_text(json.dumps(doc))
    fresh = LabelStore(tmp_path / "s")
    fresh.read("a", [NODES[0]])  # parses (and verifies) the node list shared by a and b
    # b's rows are read with the verified node list of the same hash: b's damaged index is not used by reads ...
    np.testing.assert_array_equal(fresh.read("b", [NODES[3]]), _labels(6)[[3]])
    # ... but info (which returns its head names) and check verify it
    for call in (fresh.info, fresh.check):
        with pytest.raises(LabelStoreCorruptError, match=r"index\.json of model 'b' is damaged \(checksum mismatch"):
            call("b")
    # a store that meets b's node list first in b's damaged file refuses it
    other = LabelStore(tmp_path / "s")
    with pytest.raises(LabelStoreCorruptError, match=r"index\.json of model 'b' is damaged"):
        other.read("b", [NODES[0]])
    np.testing.assert_array_equal(other.read("a", [NODES[3]]), _labels(6)[[3]])


def test_interrupted_commit_leaves_the_old_labels(tmp_path, monkeypatch):
    store = LabelStore(tmp_path / "s", dtype="float16")
    old = _labels(7)
    store.commit("m", NODES, old)
    before = store.read_all("m")[1]
    real = layout.atomic_write_bytes

    def dies_at_meta(path, data):
        if str(path).endswith("meta.json"):
            raise KeyboardInterrupt("killed before meta.json was replaced")
        return real(path, data)

    monkeypatch.setattr(layout, "atomic_write_bytes", dies_at_meta)
    with pytest.raises(KeyboardInterrupt):
        store.commit("m", NODES, old + 5)
    monkeypatch.setattr(layout, "atomic_write_bytes", real)
    mdir = store.model_dir("m")
    assert len(list(mdir.glob("labels-*.rows"))) == 2  # the new rows file was written, but is not referenced
    for reader in (store, LabelStore(tmp_path / "s")):
        np.testing.assert_array_equal(reader.read_all("m")[1], before)
        np.testing.assert_array_equal(reader.read("m", [NODES[4]]), before[[4]])
        reader.check("m")
    store.commit("m", NODES, old + 5)  # the next commit completes and removes the orphan
    assert len(list(mdir.glob("labels-*.rows"))) == 1
    np.testing.assert_allclose(LabelStore(tmp_path / "s").read_all("m")[1], old + 5,
                               atol=float(quantisation_bound(old + 5, "float16").max()))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packs_read_the_same_values_and_follow_recommits(tmp_path, dtype):
    store = LabelStore(tmp_path / "s", dtype=dtype)
    LabelStore(tmp_path / "s", format=1).commit("v1-model", NODES, _labels(10))  # not packed: read as before
    for i in range(5):
        store.commit(f"h7-{i}", NODES, _labels(20 + i))
        store.commit(f"h3-{i}", NODES, _labels(30 + i, h=3))
    store.commit("fewer-nodes", NODES[:9], _labels(40, n=9))
    made = store.pack()
    assert len(made) == 3 and all((tmp_path / "s" / "packs" / p / "pack.json").is_file() for p in made)
    ids = store.model_ids()
    for wnids in ([NODES[8], NODES[2], NODES[2], NODES[0]], [NODES[3], NODES[4]], []):
        got = LabelStore(tmp_path / "s").read_many(ids, wnids)
        for m, g in zip(ids, got):
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g, store.read(m, wnids))
    with pytest.raises(KeyError, match="no label for node"):
        store.read_many(ids, [NODES[20]])  # 'fewer-nodes' has no label there
    store.commit("h7-2", NODES, np.full((len(NODES), 7), 2.5, np.float32))  # newer than the pack
    assert np.all(store.read_many(["h7-1", "h7-2"], [NODES[5]])[1] == 2.5)
    store.pack(["h7-2", "h7-0"])  # a new pack of that family supersedes the old one
    assert len(list((tmp_path / "s" / "packs").iterdir())) == 3
    got = LabelStore(tmp_path / "s").read_many(["h7-0", "h7-1", "h7-2"], [NODES[5]])
    np.testing.assert_array_equal(got[2], np.full((1, 7), 2.5, np.float32))
    np.testing.assert_array_equal(got[1], store.read("h7-1", [NODES[5]]))


def test_damaged_or_unfinished_packs_fall_back_to_the_row_files(tmp_path):
    store = LabelStore(tmp_path / "s", dtype="float16")
    for i in range(3):
        store.commit(f"m{i}", NODES, _labels(50 + i))
    (name,) = store.pack()
    pdir = tmp_path / "s" / "packs" / name
    doc = json.loads((pdir / "pack.json").read_text())
    f = pdir / "rows.npy"
    data = bytearray(f.read_bytes())
    data[doc["data_offset"] + 6 * 3 * 7 * 2 + 5] ^= 0x04  # node block 6
    f.write_bytes(bytes(data))
    want = [store.read(m, [NODES[6], NODES[1]]) for m in ("m0", "m1", "m2")]
    fresh = LabelStore(tmp_path / "s")
    with pytest.warns(UserWarning, match=r"pack .* is damaged \(checksum mismatch in node block 6\)"):
        got = fresh.read_many(["m0", "m1", "m2"], [NODES[6], NODES[1]])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    (pdir / "pack.json").unlink()  # a pack killed before pack.json was written is not used
    got = LabelStore(tmp_path / "s").read_many(["m0", "m1", "m2"], [NODES[6], NODES[1]])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
