"""Loading files you did not write (issue 18): a crafted model file either loads or
raises ValueError naming the file and the field, and loading never allocates more than
a small multiple of the legitimate model's size (measured with tracemalloc, and once in
a child process under an address-space limit)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xrnn
from xrnn.nn import init


def base_model() -> xrnn.Sequential:
    return xrnn.Sequential(xrnn.LSTM(8, 128, num_layers=2, proj_size=16, dtype="float64", seed=0),
                           xrnn.Linear(16, 4, dtype="float64", seed=1))


MODEL_BYTES = 8 * base_model().num_parameters()  # float64: 278 KB
REFUSED_PEAK = MODEL_BYTES // 2  # a refusal reads no array data
LOADED_PEAK = 3 * MODEL_BYTES + (256 << 10)
LSTM_CONFIG = ("model", "config", "layers", 0, "config")


@contextmanager
def peak_memory():
    """``{"peak": bytes}``: the most memory traced (NumPy's arrays included) in the block."""
    result: dict[str, int] = {}
    tracemalloc.start()
    try:
        yield result
    finally:
        result["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def refused(path, match: str, limit: int = REFUSED_PEAK, **options) -> str:
    """Assert that ``xrnn.load(path, **options)`` raises ValueError naming the file and
    matching ``match``, within ``limit`` bytes of peak memory; returns the message."""
    with peak_memory() as memory, pytest.raises(ValueError, match=match) as info:
        xrnn.load(path, **options)
    assert repr(os.fspath(path)) in str(info.value)
    assert memory["peak"] < limit, f"peak {memory['peak']} bytes for a refusal"
    return str(info.value)


def npy(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.asarray(array), allow_pickle=True)
    return stream.getvalue()


def npy_raw(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy entry with a header written by hand (it may lie about the data)."""
    header += " " * (-(len(header) + 13) % 64) + "\n"
    length = struct.pack("<H" if version == (1, 0) else "<I", len(header))
    return b"\x93NUMPY" + bytes(version) + length + header.encode("latin1") + data


def entries(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename[:-4]: archive.read(info) for info in archive.infolist()}


def write(path, contents: dict[str, bytes], compression: int = zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in contents.items():
            archive.writestr(name + ".npy", data)
    return path


def meta_of(contents: dict[str, bytes]) -> dict:
    return json.loads(str(np.load(io.BytesIO(contents["__xrnn__"]))))


def with_meta(contents: dict[str, bytes], meta) -> dict[str, bytes]:
    text = meta if isinstance(meta, str) else json.dumps(meta)
    return {**contents, "__xrnn__": npy(np.array(text))}


def edited(meta: dict, where: tuple, value) -> dict:
    meta = json.loads(json.dumps(meta))
    target = meta
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return meta


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.npz"
    xrnn.save(base_model(), path)
    return path


def test_the_issue_example_is_refused_before_allocating(xp, tmp_path):
    xrnn.save(xrnn.RNN(1, 2, dtype="float64", seed=0), tmp_path / "rnn.npz")
    contents = entries(tmp_path / "rnn.npz")
    meta = edited(meta_of(contents), ("model", "config", "hidden_size"), 60000)
    path = write(tmp_path / "crafted.npz", with_meta(contents, meta))
    message = refused(path, r"model \(RNN, .*hidden_size=60000.*\(60000, 60000\)", 256 << 10)
    assert "4 arrays" in message


def test_every_initialiser_goes_through_the_shape_only_hook(xp, tmp_path):
    """Embedding draws N(0, 1) through init.create: its table is a placeholder too."""
    xrnn.save(xrnn.Sequential(xrnn.Embedding(10, 3, seed=0), xrnn.GRU(3, 4, seed=0)),
              tmp_path / "tagger.npz")
    contents = entries(tmp_path / "tagger.npz")
    where = ("model", "config", "layers", 0, "config", "num_embeddings")
    meta = edited(meta_of(contents), where, 10**12)
    refused(write(tmp_path / "crafted.npz", with_meta(contents, meta)),
            r"layers\[0\] \(Embedding, num_embeddings=1000000000000.*exceed", 256 << 10)
    with init.shape_only(1, 30):
        table = init.normal(np.random.default_rng(0), (10, 3), 0.0, 1.0, "float32")
        assert table == init.ShapeOnly((10, 3), "float32")
        with pytest.raises(ValueError, match="more than 1 parameter arrays"):
            init.uniform(np.random.default_rng(0), (1,), 1.0, "float32")


@pytest.mark.parametrize("where, value, match", [
    (LSTM_CONFIG + ("hidden_size",), 60000, r"hidden_size=60000.*exceed"),
    (LSTM_CONFIG + ("hidden_size",), 10**400, r"hidden_size=1000000.*int too large"),
    (LSTM_CONFIG + ("hidden_size",), 64, r"array '0.weight_ih_l0' has shape \(512, 8\); .* "
                                         r"expects \(256, 8\)"),
    (LSTM_CONFIG + ("input_size",), 10**12, r"input_size=1000000000000.*exceed"),
    (LSTM_CONFIG + ("num_layers",), 10**9, r"num_layers is 1000000000, but the file holds "
                                           r"only 12 arrays"),
    (LSTM_CONFIG + ("num_layers",), 3, r"missing keys \['0.weight_ih_l2'"),
    (LSTM_CONFIG + ("num_layers",), 0, r"num_layers must be a positive integer, got 0"),
    (LSTM_CONFIG + ("num_layers",), 1.5, r"num_layers must be a positive integer, got 1.5"),
    (LSTM_CONFIG + ("num_layers",), "2", r"num_layers must be a positive integer, got '2'"),
    (LSTM_CONFIG + ("num_layers",), True, r"num_layers must be a positive integer, got True"),
    (LSTM_CONFIG + ("proj_size",), 128, r"proj_size must be an integer in \[0, hidden_size"),
    (LSTM_CONFIG + ("dtype",), "float32", r"array '0.weight_ih_l0' is float64; .* expects "
                                          r"float32"),
    (LSTM_CONFIG + ("dtype",), "float128", r"dtype must be one of"),
    (LSTM_CONFIG + ("bias",), "no", r"layers\[0\].config.bias is 'no', which LSTM takes as "
                                    r"True"),
    (LSTM_CONFIG + ("bias",), 1, r"config.bias is 1, which LSTM takes as True"),
    (LSTM_CONFIG + ("bidirectional",), True, r"missing keys \['0.weight_ih_l0_reverse'"),
    (LSTM_CONFIG + ("bidirectional",), "yes", r"config.bidirectional is 'yes'"),
    (LSTM_CONFIG + ("dropout",), 1.5, r"dropout probability must be a number in \[0, 1\)"),
    (LSTM_CONFIG + ("dropout",), "0.1", r"dropout probability"),
    (LSTM_CONFIG + ("seed",), 3, r"config.seed is not an option LSTM saves"),
    (LSTM_CONFIG + ("nonlinearity",), "relu", r"LSTM.*unexpected keyword argument"),
    (("model", "config", "layers", 1, "config", "out_features"), 10**6,
     r"model.config.layers\[1\] \(Linear, .*exceed"),
    (("model", "config", "layers", 0, "class"), "GRU",
     r"layers\[0\] \(GRU, .*unexpected keyword argument 'proj_size'"),
    (("model", "config", "layers", 0, "class"), "Transformer",
     r"unknown module class 'Transformer' at model.config.layers\[0\]; .*custom_modules="
     r"\{'Transformer': Transformer\}"),
    (("model", "config", "layers", 0, "class"), "RecurrentBase", r"unknown module class"),
    (("model", "config", "layers", 0, "class"), "os.system", r"unknown module class"),
    (("model", "config", "layers", 0, "class"), 12, r"layers\[0\].class is 12; expected a "
                                                    r"class name"),
    (("model", "config", "layers", 0, "config"), [8, 128], r"layers\[0\].config is \[8, 128\]; "
                                                           r"expected an object"),
    (("model", "config", "layers", 0, "init"), "zeros", r"expected an object with exactly "
                                                        r"'class' and 'config'"),
    (("model", "config", "layers"), {"0": {}}, r"expected \{'layers': \[...\]\}"),
    (("model", "config", "layers"), [], r"unexpected keys \['0.weight_ih_l0'"),
    (("model", "class"), None, r"model.class is None"),
    (("model",), [], r"model is \[\]; expected an object"),
    (("version",), True, r"is not an xrnn file: version True, expected 1"),
    (("format",), "npz", r"is not an xrnn file: format is 'npz'"),
    (("extra",), 1, r"is not an xrnn file: .*expected an object with exactly 'format'"),
])
def test_changed_architecture_is_refused_naming_the_field(xp, good, tmp_path, where, value,
                                                          match):
    contents = entries(good)
    path = write(tmp_path / "crafted.npz", with_meta(contents, edited(meta_of(contents), where,
                                                                      value)))
    refused(path, match)


@pytest.mark.parametrize("text, match", [
    ('{"format": "xrnn-npz", "version": 1, "model": NaN}', r"JSON constant NaN"),
    ('{"format": "xrnn-npz", "version": 1e400, "model": null}', r"version is inf; expected a "
                                                                r"finite number"),
    ('{"format": "xrnn-npz", "format": "xrnn-npz", "version": 1, "model": null}',
     r"repeats a key"),
    ("[" * 100_000 + "]" * 100_000, r"nested more than 64 levels"),
    ("[" * 70 + "]" * 70, r"nested more than 64 levels"),
    ('{"format": "xrnn-npz", "version": 1, "model": {"class": "GRU", "config": '
     '{"input_size": 1' + "0" * 5000 + '}}}', r"is not an xrnn file"),
    ("not json", r"is not an xrnn file: Expecting value"),
])
def test_malformed_json_is_refused(xp, good, tmp_path, text, match):
    path = write(tmp_path / "crafted.npz", with_meta(entries(good), text))
    refused(path, match, REFUSED_PEAK + 4 * len(text) * 3)  # the text itself is read


def test_an_oversized_description_is_refused_before_it_is_read(xp, good, tmp_path):
    contents = entries(good)
    text = json.dumps(meta_of(contents)) + " " * xrnn.io.MAX_JSON_CHARS  # 4 MiB as UTF-32
    refused(write(tmp_path / "crafted.npz", with_meta(contents, text)),
            r"holds \d+ characters; expected at most 1048576")


def test_headers_that_lie_are_refused_before_the_data_is_read(xp, good, tmp_path):
    contents = entries(good)
    weight = np.load(io.BytesIO(contents["0.weight_ih_l0"]))  # (512, 8) float64

    def crafted(name, data):
        return write(tmp_path / f"{name}.npz", {**contents, "0.weight_ih_l0": data})

    big = "{'descr': '<f8', 'fortran_order': False, 'shape': (60000, 60000), }"
    refused(crafted("big", npy_raw(big, weight.tobytes())),
            r"'0.weight_ih_l0.npy': its header declares shape \(60000, 60000\) of float64 "
            r"\(28800000000 bytes of data\), but the entry holds 32768")
    small = "{'descr': '<f8', 'fortran_order': False, 'shape': (4096,), }"
    refused(crafted("reshaped", npy_raw(small, weight.tobytes())),
            r"array '0.weight_ih_l0' has shape \(4096,\); the model it describes expects "
            r"\(512, 8\)")
    negative = "{'descr': '<f8', 'fortran_order': False, 'shape': (-512, -8), }"
    refused(crafted("negative", npy_raw(negative, weight.tobytes())), r"shape")
    refused(crafted("float32", npy(weight.astype("float32"))),
            r"array '0.weight_ih_l0' is float32; the model it describes expects float64")
    refused(crafted("int64", npy(weight.astype("int64"))), r"is int64; .* expects float64")
    refused(crafted("objects", npy(np.array([{"a": 1}], dtype=object))),
            r"holds Python objects .* xrnn never unpickles")
    refused(crafted("structured", npy(np.zeros(4, dtype=[("a", "<f8"), ("b", "<i4")]))),
            r"expected a numeric dtype")
    refused(crafted("text", npy(np.array(["x" * 10]))), r"'0.weight_ih_l0' holds text")
    v3 = npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (512, 8), }",
                 weight.tobytes(), version=(3, 0))
    refused(crafted("v3", v3), r"format \(3, 0\); expected 1.0 or 2.0")
    refused(crafted("garbage", b"\x93NUMPY\x01\x00" + b"\xff" * 20), r"not a readable")
    named = write(tmp_path / "name.npz", contents)
    with zipfile.ZipFile(named, "a") as archive:
        archive.writestr("notes.txt", b"")
    refused(named, r"entry 'notes.txt' is not a .npy array")


def test_equivalent_encodings_load_bit_for_bit(xp, good, tmp_path):
    """Fortran order, big-endian and version-2.0 headers, and a deflated archive: the
    same weights, read without a random draw."""
    contents = entries(good)
    expected = {k: np.load(io.BytesIO(v)) for k, v in contents.items() if k != "__xrnn__"}
    weight = expected["0.weight_ih_l0"]
    header = "{'descr': '>f8', 'fortran_order': True, 'shape': (512, 8), }"
    contents["0.weight_ih_l0"] = npy_raw(header, weight.T.astype(">f8").tobytes(), (2, 0))
    path = write(tmp_path / "recoded.npz", contents, zipfile.ZIP_DEFLATED)
    with pytest.MonkeyPatch.context() as patch:  # any draw would fail the load
        original = init.create
        patch.setattr(init, "create", lambda shape, dtype, draw: original(
            shape, dtype, lambda size: pytest.fail("load drew a random initialisation")))
        with peak_memory() as memory:
            loaded = xrnn.load(path)
    assert memory["peak"] < LOADED_PEAK
    for name, parameter in loaded.named_parameters():
        assert xrnn.backend.backend_of(parameter.data) == xrnn.get_backend()
        np.testing.assert_array_equal(xrnn.to_numpy(parameter.data), expected[name])
    assert loaded.config() == base_model().config()


def patch_entry(path, name: str, *, file_size: int | None = None,
                compress_size: int | None = None) -> None:
    """Overwrite an entry's declared sizes in its local header and the central directory."""
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as archive:
        info, start = archive.getinfo(name), archive.start_dir
    records = [(info.header_offset, b"PK\x03\x04", 18)]  # sizes at +18 (local), +20 (central)
    position = start
    while data[position:position + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack("<HHH", data[position + 28:position + 34])
        if data[position + 46:position + 46 + n].decode() == name:
            records.append((position, b"PK\x01\x02", 20))
        position += 46 + n + m + k
    for offset, signature, at in records:
        assert data[offset:offset + 4] == signature
        if compress_size is not None:
            data[offset + at:offset + at + 4] = struct.pack("<I", compress_size)
        if file_size is not None:
            data[offset + at + 4:offset + at + 8] = struct.pack("<I", file_size)
    open(path, "wb").write(bytes(data))


def test_compressed_bombs_are_refused_before_decompressing(xp, good, tmp_path):
    contents = entries(good)
    bomb = npy(np.zeros(2 << 20))  # 16 MiB of zeros, about 16 KB deflated
    path = write(tmp_path / "bomb.npz", {**contents, "0.weight_ih_l0": bomb}, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("0.weight_ih_l0.npy").compress_size < 64 << 10
    refused(path, r"array '0.weight_ih_l0' has shape \(2097152,\); the model it describes "
                  r"expects \(512, 8\)")

    lying = write(tmp_path / "lying.npz", contents, zipfile.ZIP_DEFLATED)
    patch_entry(lying, "0.weight_hh_l0.npy", file_size=4_000_000_000)
    refused(lying, r"deflated entry '0.weight_hh_l0.npy' declares 4000000000 bytes, more than "
                   r"its \d+ compressed bytes can hold")
    overlapping = write(tmp_path / "overlapping.npz", contents)
    patch_entry(overlapping, "0.weight_hh_l0.npy", compress_size=2 * MODEL_BYTES,
                file_size=2 * MODEL_BYTES)
    refused(overlapping, r"compressed sizes add up to more than the file's \d+ bytes")


def test_a_legitimately_compressed_large_model_loads_within_its_size(xp, tmp_path):
    linear = xrnn.Linear(1024, 1024, dtype="float64")  # 8 MiB of weights, all zero
    state = {name: np.zeros(p.shape) for name, p in linear.named_parameters()}
    text = json.dumps({"format": "xrnn-npz", "version": 1,
                       "model": {"class": "Linear", "config": linear.config()}})
    np.savez_compressed(tmp_path / "zeros.npz", __xrnn__=np.array(text), **state)
    assert (tmp_path / "zeros.npz").stat().st_size < 64 << 10
    with peak_memory() as memory:
        loaded = xrnn.load(tmp_path / "zeros.npz")
    assert memory["peak"] < 1.5 * 8 * 1024 * 1025 + (2 << 20)
    assert not np.any(xrnn.to_numpy(loaded.weight.data))


class Tagger(xrnn.Module):
    """A user's model: a GRU and a per-timestep head, registered explicitly, and a
    scale drawn with xrnn.nn.init."""

    def __init__(self, input_size: int, hidden_size: int, classes: int,
                 seed: int | None = None) -> None:
        super().__init__()
        self.sizes = (input_size, hidden_size, classes)
        self._children["gru"] = xrnn.GRU(input_size, hidden_size, seed=seed)
        self._children["head"] = xrnn.Linear(hidden_size, classes, seed=seed)
        self.register_parameter("scale", init.normal(np.random.default_rng(seed), (classes,),
                                                     1.0, 0.1, "float32"))

    def forward(self, x):
        output, _ = self._children["gru"](x)
        return self._children["head"](output) * self._parameters["scale"].data

    def config(self):
        return dict(zip(("input_size", "hidden_size", "classes"), self.sizes))


def test_custom_modules_are_built_abstractly_and_checked(xp, rng, tmp_path):
    model = xrnn.Sequential(Tagger(3, 5, 2, seed=0), xrnn.Sigmoid())
    path = tmp_path / "tagger.npz"
    xrnn.save(model, path)
    refused(path, r"unknown module class 'Tagger' at model.config.layers\[0\]; .* "
                  r"custom_modules=\{'Tagger': Tagger\}\)")
    loaded = xrnn.load(path, custom_modules={"Tagger": Tagger})
    names = [name for name, _ in model.named_parameters()]
    assert [name for name, _ in loaded.named_parameters()] == names
    assert "0.gru.weight_hh_l0" in names and "0.scale" in names
    x = rng.standard_normal((4, 2, 3)).astype("float32")
    np.testing.assert_array_equal(xrnn.to_numpy(loaded(xrnn.asarray(x))),
                                  xrnn.to_numpy(model(xrnn.asarray(x))))

    contents = entries(path)
    crafted = tmp_path / "crafted.npz"
    for key, value, match in [
            ("hidden_size", 60000, r"\(Tagger, .*hidden_size=60000.*exceed"),
            ("classes", 3, r"array '0.scale' has shape \(2,\); .* \(3,\)"),
            ("layers", 2, r"Tagger.* unexpected keyword argument 'layers'"),
            ("classes", "2", r"out_features must be a positive integer, got '2'")]:
        meta = edited(meta_of(contents), ("model", "config", "layers", 0, "config", key), value)
        refused(write(crafted, with_meta(contents, meta)), match,
                custom_modules={"Tagger": Tagger})
    with pytest.raises(ValueError, match=r"custom_modules\['GRU'\] names xrnn's own GRU"):
        xrnn.load(path, custom_modules={"GRU": Tagger})
    with pytest.raises(TypeError, match="custom_modules must map class names"):
        xrnn.load(path, custom_modules={"Tagger": dict})


class Tied(xrnn.Module):
    """One Linear registered under two names (tied weights), and a parameter created
    directly rather than with xrnn.nn.init."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self._children["encoder"] = self._children["decoder"] = xrnn.Linear(features, features,
                                                                             seed=0)
        self.register_parameter("offset", xrnn.asarray(np.arange(features), dtype="float64"))

    def config(self):
        return {"features": self.features}


def test_tied_and_directly_created_parameters_load(xp, tmp_path):
    model = Tied(3)
    xrnn.save(model, tmp_path / "tied.npz")
    loaded = xrnn.load(tmp_path / "tied.npz", custom_modules={"Tied": Tied})
    assert loaded.encoder.weight is loaded.decoder.weight
    assert list(loaded.state_dict()) == ["offset", "encoder.weight", "encoder.bias",
                                         "decoder.weight", "decoder.bias"]
    for name, value in model.state_dict().items():
        got = loaded.state_dict()[name]
        assert xrnn.backend.backend_of(got) == xrnn.get_backend()
        np.testing.assert_array_equal(xrnn.to_numpy(got), xrnn.to_numpy(value))


BYTE_FLIPS = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1,
                      max_size=6)
# The fuzz tests run on the default backend only: what they exercise (the archive, the
# headers, the JSON, the shape-only build) happens before any backend array exists, and
# the tests above cover each backend.
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def load_or_refuse(path) -> None:
    """Loading ``path`` returns a model or raises ValueError, within the memory bound."""
    with peak_memory() as memory:
        try:
            loaded = xrnn.load(path)
        except ValueError as error:
            assert repr(os.fspath(path)) in str(error)
            loaded = None
    assert memory["peak"] < LOADED_PEAK, f"peak {memory['peak']} bytes"
    if loaded is not None:
        assert loaded.num_parameters() * 8 <= MODEL_BYTES


@FUZZ
@given(flips=BYTE_FLIPS)
def test_random_byte_flips_load_or_are_refused(good, tmp_path, flips):
    data = bytearray(good.read_bytes())
    for position, value in flips:
        data[position % len(data)] = value
    (tmp_path / "flipped.npz").write_bytes(bytes(data))
    load_or_refuse(tmp_path / "flipped.npz")


@FUZZ
@given(flips=BYTE_FLIPS, entry=st.integers(0, 100))
def test_byte_flips_inside_an_entry_with_a_valid_checksum(good, tmp_path, flips, entry):
    """Flips that the zip checksum does not catch: the .npy header or the JSON text."""
    contents = entries(good)
    name = ["__xrnn__", *contents][entry % (len(contents) + 1)]
    data = bytearray(contents[name])
    for position, value in flips:
        data[position % min(len(data), 256 if name != "__xrnn__" else len(data))] = value
    load_or_refuse(write(tmp_path / "flipped.npz", {**contents, name: bytes(data)}))


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.integers(-2**70, 2**70) | st.sampled_from([0, 1, 2, 8, 16, 128, 10**9])
                    | st.text(max_size=8) | st.sampled_from(["float32", "float64", "tanh"]),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@FUZZ
@given(layer=st.integers(0, 1), value=JSON,
       key=st.sampled_from(["input_size", "hidden_size", "num_layers", "bias", "batch_first",
                            "dropout", "bidirectional", "dtype", "proj_size", "in_features",
                            "out_features", "seed", "class"]))
def test_random_option_values_load_or_are_refused(good, tmp_path, layer, key, value):
    contents = entries(good)
    where = ("model", "config", "layers", layer) + (() if key == "class" else ("config",))
    meta = edited(meta_of(contents), where + (key,), value)
    load_or_refuse(write(tmp_path / "crafted.npz", with_meta(contents, meta)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_crafted_files_are_refused_under_an_address_space_limit(tmp_path):
    """Before issue 18, the first file made load try to allocate 26.8 GiB."""
    xrnn.save(xrnn.RNN(1, 2, dtype="float64", seed=0), tmp_path / "rnn.npz")
    contents = entries(tmp_path / "rnn.npz")
    paths = []
    for key, value in [("hidden_size", 60000), ("num_layers", 10**9), ("input_size", 10**10)]:
        meta = edited(meta_of(contents), ("model", "config", key), value)
        paths.append(str(write(tmp_path / f"{key}.npz", with_meta(contents, meta))))
    bomb = {**contents, "weight_hh_l0": npy(np.zeros(4 << 20))}  # 32 MiB deflated to 32 KB
    paths.append(str(write(tmp_path / "bomb.npz", bomb, zipfile.ZIP_DEFLATED)))
    child = textwrap.dedent("""
        import resource, sys
        import xrnn
        xrnn.load(sys.argv[1])  # a legitimate file first: everything load imports is loaded
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
        limit = used + (24 << 20)  # room for 24 MiB more: none of these files may need more
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        for path in sys.argv[2:]:
            try:
                xrnn.load(path)
            except ValueError as error:
                print("refused", path)
        """)
    result = subprocess.run([sys.executable, "-c", child, str(tmp_path / "rnn.npz"), *paths],
                            capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, XRNN_BACKEND="numpy"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [word for path in paths for word in ("refused", path)]


class DeepEncoder(xrnn.Module):
    """A user's class that passes a size from its config straight into a GRU."""

    def __init__(self, layers: int = 1) -> None:
        super().__init__()
        self.layers = layers
        self.gru = xrnn.GRU(2, 3, num_layers=layers, seed=0)

    def config(self):
        return {"layers": self.layers}


def test_a_huge_layer_count_in_a_custom_config_stops_at_the_budget(xp, tmp_path):
    """The recurrent layer creates its parameters one at a time, so the budget stops a
    file's num_layers = 10**9 at once (it used to build every layer's shapes first)."""
    path = tmp_path / "deep.npz"
    xrnn.save(DeepEncoder(1), path)
    contents = entries(path)
    meta = edited(meta_of(contents), ("model", "config", "layers"), 10**9)
    refused(write(tmp_path / "crafted.npz", with_meta(contents, meta)),
            r"DeepEncoder, layers=1000000000\).*parameter arrays",
            custom_modules={"DeepEncoder": DeepEncoder})
