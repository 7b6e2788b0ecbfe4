"""audit.sealed_secrets: the one AES-256-GCM sealer and 0600 key file behind the viewer and review app."""

from __future__ import annotations

import base64
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from audit.review.login_sealing import LoginSealer
from audit.sealed_secrets import AesGcmSealer, decode_key, load_or_create_key_file, new_key
from cds.viewer.sealed_secrets import SecretSealer


class _KeyProblem(ValueError):
    pass


def test_sealed_bytes_open_only_with_their_key_and_associated_data() -> None:
    key = os.urandom(32)
    sealer = AesGcmSealer(key, key_name="test key")
    sealed = sealer.seal(b"secret", b"row-1")
    assert b"secret" not in sealed and sealed != sealer.seal(b"secret", b"row-1")  # fresh nonce
    assert len(sealed) == 12 + len(b"secret") + 16
    assert AesGcmSealer(key, key_name="test key").open(sealed, b"row-1") == b"secret"
    assert sealer.open(sealed, b"row-2") is None
    assert AesGcmSealer(os.urandom(32), key_name="test key").open(sealed, b"row-1") is None
    for broken in (sealed[:-1] + bytes([sealed[-1] ^ 1]), sealed[:12], sealed[:5], b""):
        assert sealer.open(broken, b"row-1") is None


def test_key_errors_use_the_callers_name_and_class_and_never_quote_the_key() -> None:
    with pytest.raises(_KeyProblem, match="the test key must be 32 bytes, got 16"):
        AesGcmSealer(os.urandom(16), key_name="test key", error=_KeyProblem)
    short = base64.urlsafe_b64encode(os.urandom(16)).decode()
    with pytest.raises(_KeyProblem, match="the test key must decode to 32 bytes, got 16") as raised:
        decode_key(short, key_name="test key", error=_KeyProblem)
    assert short not in str(raised.value)
    with pytest.raises(_KeyProblem, match="the test key is not base64url"):
        decode_key("not base64 at all!", key_name="test key", error=_KeyProblem)


def test_new_keys_are_unpadded_base64url_of_32_random_bytes() -> None:
    key = new_key()
    assert "=" not in key and len(decode_key(key, key_name="k")) == 32 and key != new_key()
    padded = base64.urlsafe_b64encode(decode_key(key, key_name="k")).decode()
    assert decode_key(padded, key_name="k") == decode_key(key, key_name="k")


def test_a_key_file_is_made_once_owner_only_and_exposed_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "some.key"
    key = load_or_create_key_file(path, key_name="test key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_key_file(path, key_name="test key") == key and list(path.parent.iterdir()) == [path]
    path.chmod(0o604)
    with pytest.raises(_KeyProblem, match="chmod 600"):
        load_or_create_key_file(path, key_name="test key", error=_KeyProblem)
    with pytest.raises(PermissionError, match="accessible to group or others"):
        load_or_create_key_file(path, key_name="test key", error=_KeyProblem, exposed_error=PermissionError)


def test_a_key_file_that_holds_no_key_raises_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "some.key"
    path.write_text("short")
    path.chmod(0o600)
    with pytest.raises(_KeyProblem, match="test key"):
        load_or_create_key_file(path, key_name="test key", error=_KeyProblem, exposed_error=PermissionError)


def test_processes_starting_together_share_the_one_key_that_won(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "some.key"
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_or_create_key_file(path, key_name="k"), range(16)))
    assert len(keys) == 1 and list(path.parent.iterdir()) == [path]


def test_key_files_written_before_the_shared_module_still_load(tmp_path: Path) -> None:
    """The viewer wrote padded base64url without a newline, the review app unpadded with one."""
    key = os.urandom(32)
    viewer_file, review_file = tmp_path / "viewer-session.key", tmp_path / "review-login.key"
    viewer_file.write_bytes(base64.urlsafe_b64encode(key))
    review_file.write_text(base64.urlsafe_b64encode(key).decode().rstrip("=") + "\n")
    for path in (viewer_file, review_file):
        path.chmod(0o600)
        assert load_or_create_key_file(path, key_name="k") == key


def test_the_viewer_and_review_stored_forms_are_the_shared_seal() -> None:
    """Viewer: raw ``nonce || ciphertext`` bound to the row key; review: that in base64url, to a digest."""
    key = os.urandom(32)
    shared = AesGcmSealer(key, key_name="k")
    row_key = "ab" * 32
    viewer_sealed = SecretSealer(key).seal("token", bound_to=row_key)
    assert shared.open(viewer_sealed, row_key.encode("ascii")) == b"token"
    assert SecretSealer(key).open(shared.seal(b"token", row_key.encode("ascii")), bound_to=row_key) == "token"
    row = os.urandom(32)
    review_sealed = LoginSealer(key).seal("verifier", row=row)
    raw = base64.urlsafe_b64decode(review_sealed + "=" * (-len(review_sealed) % 4))
    assert shared.open(raw, row) == b"verifier"
    reply = base64.urlsafe_b64encode(shared.seal(b"verifier", row)).decode().rstrip("=")
    assert LoginSealer(key).open(reply, row=row) == "verifier"
