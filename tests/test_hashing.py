"""File digests: computed once per (path, mtime, size), remembered across runs, merged across ranks."""

import json

from bench import hashing


def test_a_digest_written_by_another_run_while_we_hash_is_kept(tmp_path, monkeypatch):
    weights, known_file = tmp_path / "w.safetensors", tmp_path / "cache" / "file-sha256.json"
    weights.write_bytes(b"weights")
    known_file.parent.mkdir()
    hash_file = hashing._hash_file

    def slow_hash(path):  # another rank finishes its own file while this one is still hashing
        known_file.write_text(json.dumps({"other|1|2": "theirs"}))
        return hash_file(path)

    monkeypatch.setattr(hashing, "_hash_file", slow_hash)
    hashing._DIGESTS.clear()
    digest = hashing.file_sha256(weights, known_file.parent)
    hashing._DIGESTS.clear()
    assert set(json.loads(known_file.read_text()).values()) == {"theirs", digest}


def test_file_digests_are_cached_across_runs(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    digest = hashing.file_sha256(weights, tmp_path / "cache")
    known = json.loads((tmp_path / "cache" / "file-sha256.json").read_text())
    assert list(known.values()) == [digest]
    (tmp_path / "cache" / "file-sha256.json").write_text(json.dumps({k: "from-disk" for k in known}))
    hashing._DIGESTS.clear()  # a new process: the file is not read again
    assert hashing.file_sha256(weights, tmp_path / "cache") == "from-disk"
    hashing._DIGESTS.clear()
