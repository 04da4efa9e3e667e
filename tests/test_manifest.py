"""models/<name>/manifest.json: which files may be reused, and for which source."""

from toolkit import __version__, manifest

HUB = {"kind": "hub", "id": "team/ko-8b", "revision": "main", "commit": "a" * 40}
ADAPTER = {"kind": "local", "id": "/lora", "fingerprint": "f1"}


def test_same_origin_needs_the_same_source_and_adapter():
    man = manifest.new(HUB)
    assert manifest.same_origin(man, HUB, None)
    assert not manifest.same_origin(man, {**HUB, "commit": "b" * 40}, None)  # the hub moved on
    assert not manifest.same_origin(man, HUB, ADAPTER)  # a merged model is another model
    merged = manifest.new(HUB, {**ADAPTER, "r": 8, "lora_alpha": 16})
    assert manifest.same_origin(merged, HUB, ADAPTER)  # the adapter's shape is recorded, not compared
    assert not manifest.same_origin(merged, HUB, {**ADAPTER, "fingerprint": "f2"})
    assert not manifest.same_origin(merged, HUB, None)


def test_record_rewrites_the_file_and_a_broken_one_reads_as_empty(tmp_path):
    man = manifest.new(HUB)
    manifest.record(tmp_path, man, "Q8_0", {"file": "m-Q8_0.gguf", "size": 1})
    back = manifest.load(tmp_path)
    assert back["files"] == {"Q8_0": {"file": "m-Q8_0.gguf", "size": 1}} and back["toolkit_version"] == __version__
    assert back["source"] == HUB and back["llama_cpp"]["llama_cpp_python"]
    # A truncated or foreign manifest proves nothing: no file is then taken as ours.
    (tmp_path / manifest.FILENAME).write_text('{"files": {', encoding="utf-8")
    assert manifest.load(tmp_path) == {}
    (tmp_path / manifest.FILENAME).write_text("[1, 2]", encoding="utf-8")
    assert manifest.load(tmp_path) == {} and manifest.load(tmp_path / "none") == {}


def test_recorded_sha256_is_the_manifests_while_the_size_holds(tmp_path):
    gguf = tmp_path / "m-Q4_K_M.gguf"
    gguf.write_bytes(b"x" * 10)
    assert manifest.recorded_sha256(gguf) is None  # no manifest
    man = manifest.new({"kind": "local", "id": "m"})
    manifest.record(tmp_path, man, "Q4_K_M", {"type": "Q4_K_M", "file": gguf.name, "size": 10, "sha256": "ab" * 32})
    assert manifest.recorded_sha256(gguf) == "ab" * 32
    assert manifest.recorded_sha256(tmp_path / "other.gguf") is None
    gguf.write_bytes(b"x" * 11)  # changed behind the manifest's back: not what it describes
    assert manifest.recorded_sha256(gguf) is None
