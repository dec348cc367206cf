"""The digest key (lethe.digests): where it comes from, how its file is made and guarded, what it digests."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from lethe import digests
from lethe.config import build_config
from lethe.data.shards import shard_digest
from lethe.digests import ENV_VAR, DigestKey, key_id, keyed_digest, keyed_hasher, load_key
from lethe.errors import ConfigError

ROWS = (["b", "a"], [1, 0], ["h1", "h0"])


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keyed_digest_is_hmac_sha256_and_the_key_id_is_public() -> None:
    key = b"k" * 32
    assert keyed_digest(key, b"data") == hmac.new(key, b"data", hashlib.sha256).hexdigest()
    assert keyed_digest(key, b"data") != hashlib.sha256(b"data").hexdigest()
    h = keyed_hasher(key)
    h.update(b"da")
    h.update(b"ta")
    assert h.hexdigest() == keyed_digest(key, b"data")
    assert key_id(key) == hashlib.sha256(b"lethe-digest-key-id" + key).hexdigest()[:16]
    assert key_id(DigestKey(key, "test")) == key_id(key) != key_id(b"other")
    # repr / str never show the secret
    shown = repr(DigestKey(b"super-secret", "test")) + str(DigestKey(b"super-secret", "test"))
    assert "super-secret" not in shown and "source='test'" in shown
    with pytest.raises(TypeError):
        keyed_digest(b"", b"data")


def test_key_file_is_created_0600_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache" / "keys" / "digest.key"
    old_umask = os.umask(0)  # no help from the umask: the file must be created 0600 by itself
    try:
        with caplog.at_level(logging.INFO, logger="lethe.digests"):
            first = load_key(path)
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert path.read_bytes() == first.secret and len(first.secret) == 32
    assert first.source == str(path) and first.key_id == key_id(first.secret)
    assert os.listdir(path.parent) == ["digest.key"]  # no temporary file left behind
    # The key id is logged, never the key.
    assert first.key_id in caplog.text and first.secret.hex() not in caplog.text
    again = load_key(path)
    assert again == first
    assert shard_digest(*ROWS, again) == shard_digest(*ROWS, first)
    assert shard_digest(*ROWS, load_key(tmp_path / "other.key")) != shard_digest(*ROWS, first)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "digest.key"
    load_key(path)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="open to group or others") as e:
        load_key(path)
    msg = str(e.value)
    assert str(path) in msg and "mode 0600" in msg and f"got mode {mode:04o}" in msg
    assert "\n" not in msg
    os.chmod(path, 0o400)  # read-only for the owner is fine
    assert load_key(path).secret == path.read_bytes()


def test_empty_unreadable_or_odd_key_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.key"
    empty.touch(mode=0o600)
    with pytest.raises(ConfigError, match="the digest key file is empty") as e:
        load_key(empty)
    assert str(empty) in str(e.value)
    folder = tmp_path / "folder.key"
    folder.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_key(folder)
    dangling = tmp_path / "dangling.key"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="cannot read the digest key file"):
        load_key(dangling)
    assert not (tmp_path / "nowhere").exists()  # never created through a dangling link


# Loads the key as user nobody: lethe is imported first (as the caller), then the process drops root,
# which reads a file whatever its mode.
_LOAD_AS_NOBODY = """
import os, sys
from lethe.digests import load_key
from lethe.errors import ConfigError
os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    load_key(sys.argv[1])
except ConfigError as e:
    print(e)
    sys.exit(3)
"""


def test_unreadable_key_file_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        path = tmp_path / "digest.key"
        load_key(path)
        os.chmod(path, 0o000)
        with pytest.raises(ConfigError, match="cannot read the digest key file") as e:
            load_key(path)
        assert str(e.value).endswith("got Permission denied")
        return
    # root (CI): a folder nobody can pass through but not list, under the world-passable /tmp, so that
    # nobody finds its file (stat) and cannot open it
    folder = Path(tempfile.mkdtemp(prefix="lethe-key-"))
    try:
        folder.chmod(0o711)
        path = folder / "digest.key"
        load_key(path)
        os.chown(path, 65534, 65534)  # nobody's own key file, which its mode keeps nobody from reading
        os.chmod(path, 0o000)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])}
        r = subprocess.run(
            [sys.executable, "-c", _LOAD_AS_NOBODY, str(path)], env=env, capture_output=True, text=True
        )
        assert r.returncode == 3, r.stderr[-2000:]
        assert r.stdout.startswith(f"cannot read the digest key file; at {path};"), r.stdout
        assert r.stdout.rstrip().endswith("got Permission denied"), r.stdout
    finally:
        shutil.rmtree(folder)


def test_env_key_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "digest.key"
    from_file = load_key(path)
    monkeypatch.setenv(ENV_VAR, "correct horse battery staple")
    key = load_key(path)
    assert key.secret == b"correct horse battery staple" and key.source == f"env {ENV_VAR}"
    assert key.key_id != from_file.key_id and path.read_bytes() == from_file.secret
    assert shard_digest(*ROWS, key) == shard_digest(*ROWS, b"correct horse battery staple")
    # With the variable set, no key file is made.
    absent = tmp_path / "none" / "digest.key"
    load_key(absent)
    assert not absent.parent.exists()
    # Even an unusable file does not matter then.
    os.chmod(path, 0o644)
    assert load_key(path) == key
    monkeypatch.setenv(ENV_VAR, "")
    with pytest.raises(ConfigError, match=f"{ENV_VAR} is set but empty"):
        load_key(path)


def test_concurrent_creators_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "digest.key"
    barrier = threading.Barrier(8)
    got: list[bytes] = []

    def create() -> None:
        barrier.wait()
        got.append(load_key(path).secret)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and set(got) == {path.read_bytes()}
    assert os.listdir(path.parent) == ["digest.key"]


def test_the_loser_of_a_creation_race_reads_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "digest.key"
    real_link = os.link

    def other_process_wins(src: str, dst: str) -> None:
        fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.write(fd, b"w" * 32)
        os.close(fd)
        real_link(src, dst)  # raises FileExistsError, as a real loser sees it

    monkeypatch.setattr(digests.os, "link", other_process_wins)
    assert load_key(path).secret == b"w" * 32
    assert os.listdir(tmp_path) == ["digest.key"]


def test_key_file_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(digests.os, "link", no_links)
    path = tmp_path / "digest.key"
    key = load_key(path)
    assert _mode(path) == 0o600 and path.read_bytes() == key.secret
    assert os.listdir(tmp_path) == ["digest.key"]
    assert load_key(path) == key


def test_config_places_the_key_file(tmp_path: Path) -> None:
    cfg = build_config("smoke", overrides={"workdir": str(tmp_path / "runs" / "a")})
    assert cfg.digest_key_path == tmp_path / "runs" / "cache" / "keys" / "digest.key"
    cfg = build_config("smoke", overrides={"cache_dir": str(tmp_path / "c")})
    assert cfg.digest_key_path == tmp_path / "c" / "keys" / "digest.key"
    own = tmp_path / "secrets" / "lethe.key"
    cfg = build_config("smoke", overrides={"privacy": {"digest_key_file": str(own)}})
    assert cfg.digest_key_path == own
    for bad in ("s3://bucket/digest.key", "  "):
        with pytest.raises(ConfigError, match="privacy.digest_key_file"):
            build_config("smoke", overrides={"privacy": {"digest_key_file": bad}})
