"""save/load: portable .npz files without pickle, bit for bit across backends."""

from __future__ import annotations

import json

import numpy as np
import pytest

import xrnn
from xrnn.testing import assert_close


def model(dtype="float32"):
    return xrnn.Sequential(
        xrnn.LSTM(3, 6, 2, bidirectional=True, proj_size=2, batch_first=True, dtype=dtype, seed=1),
        xrnn.ReLU(), xrnn.GRU(4, 5, dropout=0.0, dtype=dtype, seed=2), xrnn.Tanh(),
        xrnn.RNN(5, 4, 2, nonlinearity="relu", bias=False, dropout=0.3, dtype=dtype, seed=3),
        xrnn.Linear(4, 2, dtype=dtype, seed=4), xrnn.Sigmoid())


def host_params(module):
    return {name: xrnn.to_numpy(p.data).copy() for name, p in module.named_parameters()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("target", ["numpy", "array_api_strict", "torch"])
def test_round_trip_bit_for_bit_across_backends(xp, rng, tmp_path, target, dtype):
    """Saved on one backend, loaded on another: the same architecture, dtype and every
    weight bit (float64 weights drawn at full precision, so a float32 detour shows)."""
    original = model(dtype).eval()
    path = tmp_path / "model.npz"
    xrnn.save(original, path)
    x = rng.standard_normal((2, 7, 3)).astype(dtype)
    expected = xrnn.to_numpy(original(xrnn.asarray(x)))
    with xrnn.use_backend(target):
        loaded = xrnn.load(path).eval()
        assert repr(loaded) == repr(original)
        assert loaded.config() == original.config()
        assert list(host_params(loaded)) == list(host_params(original))
        for name, array in host_params(original).items():
            got = dict(loaded.named_parameters())[name].data
            assert xrnn.backend.backend_of(got) == target
            assert xrnn.to_numpy(got).dtype == np.dtype(dtype)
            np.testing.assert_array_equal(xrnn.to_numpy(got), array, err_msg=name)
        assert_close(loaded(xrnn.asarray(x)), expected, rtol=1e-6, atol=1e-6)


def test_float64_and_a_plain_state_mapping(xp, rng, tmp_path):
    rnn = xrnn.RNN(2, 3, dtype="float64", seed=0)
    xrnn.save(rnn.state_dict(), tmp_path / "state.npz")
    state = xrnn.load(tmp_path / "state.npz")
    assert list(state) == [name for name, _ in rnn.named_parameters()]
    for name, value in rnn.state_dict().items():
        assert state[name].dtype == xp.float64
        np.testing.assert_array_equal(xrnn.to_numpy(state[name]), xrnn.to_numpy(value))
    xrnn.save(rnn, tmp_path / "rnn.npz")
    assert xrnn.load(tmp_path / "rnn.npz").dtype == "float64"


def write_npz(path, arrays, meta):
    np.savez(path, __xrnn__=np.array(json.dumps(meta)), **arrays)


def test_bad_files_raise_clear_errors(xp, tmp_path):
    good = tmp_path / "good.npz"
    xrnn.save(xrnn.GRU(2, 3, seed=0), good)
    data = good.read_bytes()

    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable xrnn file"):
        xrnn.load(tmp_path / "garbage.npz")
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable xrnn file"):
        xrnn.load(tmp_path / "truncated.npz")
    with pytest.raises(ValueError, match="not a readable xrnn file"):
        xrnn.load(tmp_path / "missing.npz")

    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not an xrnn file"):
        xrnn.load(tmp_path / "plain.npz")

    np.savez(tmp_path / "pickled.npz", __xrnn__=np.array([{"format": "xrnn-npz"}], dtype=object))
    with pytest.raises(ValueError, match="not a readable xrnn file"):  # pickle is never loaded
        xrnn.load(tmp_path / "pickled.npz")

    meta = {"format": "xrnn-npz", "version": 1,
            "model": {"class": "GRU", "config": {"input_size": 2, "hidden_size": 3}}}
    arrays = {k: xrnn.to_numpy(v) for k, v in xrnn.GRU(2, 3, seed=0).state_dict().items()}
    arrays["weight_hh_l0"] = np.zeros((9, 4), dtype="float32")
    write_npz(tmp_path / "mismatch.npz", arrays, meta)
    with pytest.raises(ValueError, match="weight_hh_l0.*shape"):
        xrnn.load(tmp_path / "mismatch.npz")

    arrays.pop("weight_hh_l0")
    write_npz(tmp_path / "missing_key.npz", arrays, meta)
    with pytest.raises(ValueError, match=r"missing keys \['weight_hh_l0'\]"):
        xrnn.load(tmp_path / "missing_key.npz")

    write_npz(tmp_path / "unknown.npz", {}, dict(meta, model={"class": "Transformer", "config": {}}))
    with pytest.raises(ValueError, match="unknown module class 'Transformer'"):
        xrnn.load(tmp_path / "unknown.npz")

    write_npz(tmp_path / "future.npz", {}, dict(meta, version=99))
    with pytest.raises(ValueError, match="version 99"):
        xrnn.load(tmp_path / "future.npz")


def test_save_rejects_other_objects(xp, tmp_path):
    with pytest.raises(TypeError, match="save takes an xrnn Module or a mapping"):
        xrnn.save([1, 2], tmp_path / "x.npz")
    assert not list(tmp_path.iterdir())  # nothing half-written
