import io
import json

import numpy as np
import pytest

from conftest import shakespeare
from untok.data.info import describe
from untok.data.ingest import ingest, open_data
from untok.data.loader import TrainSampler, UnitStream, eval_windows, targets_of
from untok.data.store import ByteStore, store_paths
from untok.errors import DataError
from untok.units import BOS, EOS


def _docs(store):
    return [store.document(i) for i in range(store.num_docs)]


def test_plain_file_round_trips_bytes(tmp_path):
    data = bytes(range(256)) * 10 + b"\xc3\x28 invalid utf-8 \xff"
    (tmp_path / "bin.dat").write_bytes(data)
    store = ingest([str(tmp_path / "bin.dat")], tmp_path / "s", progress=False)
    assert _docs(store) == [data]
    assert store.num_bytes == len(data)
    store.verify()
    files = {ext for ext, path in store_paths(tmp_path / "s").items() if path.is_file()}
    assert files == {"bin", "idx", "names", "meta.json"}  # NAME.chat only for chat data
    assert store.codes is None and not store.is_chat


def test_folder_recursive_with_glob(tmp_path):
    root = tmp_path / "books"
    (root / "a" / "b").mkdir(parents=True)
    (root / "one.txt").write_text("first")
    (root / "a" / "b" / "two.txt").write_text("second")
    (root / "a" / "skip.md").write_text("not me")
    (root / ".hidden.txt").write_text("hidden")
    store = ingest([str(root)], tmp_path / "s", glob="*.txt", progress=False)
    assert sorted(_docs(store)) == [b"first", b"second"]
    assert any(name.endswith("two.txt") for name in store.names())


def test_jsonl_json_csv_tsv_and_stdin(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "alpha"}\n\n{"text": "beta", "x": 1}\n')
    (tmp_path / "d.json").write_text(json.dumps([{"body": "gamma"}, {"body": "delta"}]))
    (tmp_path / "d.csv").write_text('id,text\n1,"multi\nline, with comma"\n2,eps\n')
    (tmp_path / "d.tsv").write_text("text\tid\nzeta\t1\n")
    store = ingest([str(tmp_path / "d.jsonl")], tmp_path / "s1", progress=False)
    assert _docs(store) == [b"alpha", b"beta"]
    store = ingest([str(tmp_path / "d.json")], tmp_path / "s2", field="body", progress=False)
    assert _docs(store) == [b"gamma", b"delta"]
    store = ingest([str(tmp_path / "d.csv"), str(tmp_path / "d.tsv")], tmp_path / "s3",
                   progress=False)
    assert _docs(store) == [b"multi\nline, with comma", b"eps", b"zeta"]
    store = ingest(["-"], tmp_path / "s4", progress=False, stdin=io.BytesIO(b"from stdin\xff"))
    assert _docs(store) == [b"from stdin\xff"]
    store = ingest(["-"], tmp_path / "s5", fmt="jsonl", progress=False,
                   stdin=io.BytesIO(b'{"text": "x"}\n'))
    assert _docs(store) == [b"x"]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["one", "two", None]}), tmp_path / "d.parquet")
    store = ingest([str(tmp_path / "d.parquet")], tmp_path / "s", progress=False)
    assert _docs(store) == [b"one", b"two", b""]


@pytest.mark.parametrize("content,field,message", [
    ('{"body": "x"}\n', "text", "no field 'text'"),
    ("{not json\n", "text", "invalid JSON"),
])
def test_bad_records_are_named(tmp_path, content, field, message):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        ingest([str(tmp_path / "d.jsonl")], tmp_path / "s", field=field, progress=False)
    assert not list(tmp_path.glob("s.*")), "nothing half-written"


def test_empty_and_missing_sources_leave_nothing(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        ingest([str(tmp_path / "empty.txt")], tmp_path / "s", progress=False)
    with pytest.raises(DataError, match="not found"):
        ingest([str(tmp_path / "nope.txt")], tmp_path / "s", progress=False)
    with pytest.raises(DataError, match="no files matching"):
        ingest([str(tmp_path)], tmp_path / "s", glob="*.xyz", progress=False)
    assert not list(tmp_path.glob("s.*"))


def test_corrupt_store_is_detected(store, tmp_path):
    paths = store.paths
    with open(paths["bin"], "ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match="corrupt"):
        ByteStore(paths["bin"].with_suffix(""))
    paths["meta.json"].write_text("{broken")
    with pytest.raises(DataError, match="corrupt byte store meta"):
        ByteStore(paths["bin"].with_suffix(""))
    with pytest.raises(DataError, match="no byte store"):
        ByteStore(tmp_path / "absent")


def test_tail_split_matches_the_standard_shakespeare_split(tmp_path):
    store = ingest([str(shakespeare())], tmp_path / "s", progress=False)
    assert store.meta["split"]["mode"] == "tail"
    assert store.split_bytes() == {"train": 1_003_854, "val": 111_540}
    val = store.segments("val")
    assert bytes(store.data[val.starts[0]:]) == shakespeare().read_bytes()[1_003_854:]


def test_document_split_is_deterministic_and_disjoint(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        (root / f"{i:03d}.txt").write_bytes(bytes(rng.integers(97, 123, 50 + i % 7)))
    a = ingest([str(root)], tmp_path / "a", val_fraction=0.2, progress=False)
    b = ingest([str(root)], tmp_path / "b", val_fraction=0.2, progress=False)
    assert a.meta["split"]["mode"] == "document"
    train, val = set(a.segments("train").docs), set(a.segments("val").docs)
    assert not train & val and len(train | val) == 400
    assert val == set(b.segments("val").docs)
    assert 0.12 < len(val) / 400 < 0.28


def test_explicit_val_bytes(tmp_path, text_file):
    store = ingest([str(text_file)], tmp_path / "s", val_bytes=1234, progress=False)
    assert store.split_bytes()["val"] == 1234
    with pytest.raises(DataError, match="does not fit"):
        ingest([str(text_file)], tmp_path / "t", val_bytes=10**9, progress=False)


def test_info_reports_utf8_and_scripts(tmp_path):
    (tmp_path / "t.txt").write_bytes("Привет мир hello ".encode() * 20 + b"\xff\xfe")
    info = describe(ingest([str(tmp_path / "t.txt")], tmp_path / "s", progress=False))
    assert 0.99 < info["valid_utf8_share"] < 1.0
    scripts = {s["script"] for s in info["top_scripts"]}
    assert {"cyrillic", "latin"} <= scripts
    assert info["train_bytes"] + info["val_bytes"] == info["bytes"]


def test_open_data_caches_text_files(text_file):
    first = open_data(text_file, progress=False)
    second = open_data(text_file, progress=False)
    assert first.paths == second.paths
    with pytest.raises(DataError, match="not found"):
        open_data(text_file.with_name("missing.txt"))


def test_unit_stream_layout(tmp_path):
    for i, text in enumerate([b"ab", b"", b"cde"]):
        (tmp_path / f"{i}.txt").write_bytes(text)
    store = ingest([str(tmp_path / f"{i}.txt") for i in range(3)], tmp_path / "s",
                   split="tail", val_bytes=2, progress=False)
    train, val = UnitStream(store, "train"), UnitStream(store, "val")
    # train = "ab" + "c" (cut inside the last document: no EOS), val = "de"
    assert train.window(0, len(train)).tolist() == [BOS, 97, 98, EOS, BOS, 99]
    assert val.window(0, len(val)).tolist() == [BOS, 100, 101, EOS]


def test_sampler_is_resumable(store):
    stream = UnitStream(store, "train")
    a = TrainSampler(stream, 16, 4, seed=3)
    a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # survives JSON (checkpoint)
    expected = a.next_batch()
    b = TrainSampler(stream, 16, 4, seed=99)
    b.load_state_dict(state)
    got = b.next_batch()
    assert all((x == y).all() for x, y in zip(expected, got, strict=True))
    inputs, targets = got
    assert inputs.shape == targets.shape == (4, 16)
    assert (targets != BOS).all(), "BOS is given, never predicted"
    assert (targets[:, :-1] == targets_of(inputs[:, 1:])).all(), "targets are next inputs"


def test_sampler_rejects_tiny_split(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"x" * 40)
    store = ingest([str(tmp_path / "t.txt")], tmp_path / "s", progress=False)
    with pytest.raises(DataError, match="fewer than one training window"):
        TrainSampler(UnitStream(store, "train"), 64, 2, seed=0)


@pytest.mark.parametrize("length", [1, 2, 5, 33, 34, 100, 257])
@pytest.mark.parametrize("context,stride", [(32, 16), (32, 32), (32, 1), (8, 3)])
def test_eval_windows_score_every_target_once(length, context, stride):
    scored = []
    for start, first in eval_windows(length, context, stride):
        end = min(start + context + 1, length)
        targets = range(max(first, start + 1), end)
        scored.extend(targets)
        for t in targets:  # enough history where the stream allows
            assert t - start >= min(context - stride + 1, t)
    assert sorted(scored) == list(range(1, length))


def test_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"content": ["first row", "second\nrow"]}).save_to_disk(
        str(tmp_path / "hf"))
    store = ingest([str(tmp_path / "hf")], tmp_path / "s", field="content", progress=False)
    assert _docs(store) == [b"first row", b"second\nrow"]
    with pytest.raises(DataError, match="no column 'text'"):
        ingest([str(tmp_path / "hf")], tmp_path / "t", progress=False)
