"""audit.review.login_sealing: the key the review app seals pending sign-ins with, and the seal itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.review.login_sealing import (
    LoginKeyError,
    LoginSealer,
    decode_login_key,
    load_or_create_login_key,
    new_login_key,
    row_digest,
)

ROW = row_digest(state_sha256="a" * 64, nonce="n", return_to="/review/analyses", expires_at=1.5e9)


def test_a_key_file_is_made_once_owner_only_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "review-login.key"
    first = load_or_create_login_key(path)
    assert path.stat().st_mode & 0o777 == 0o600 and (path.parent.stat().st_mode & 0o777) == 0o700
    assert load_or_create_login_key(path) == first and len(first) == 32


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "review-login.key"
    load_or_create_login_key(path)
    path.chmod(0o640)
    with pytest.raises(LoginKeyError, match="chmod 600"):
        load_or_create_login_key(path)


@pytest.mark.parametrize("bad", ["not base64!", new_login_key()[:20], ""])
def test_a_malformed_configured_key_is_refused_without_quoting_it(bad: str) -> None:
    with pytest.raises(LoginKeyError) as raised:
        LoginSealer.from_key_or_file(bad, Path("/nonexistent/never-read"))
    assert bad == "" or bad not in str(raised.value)


def test_sealed_verifiers_open_only_with_the_key_and_row_they_were_sealed_for() -> None:
    key = decode_login_key(new_login_key())
    sealer = LoginSealer(key)
    sealed = sealer.seal("v" * 64, row=ROW)
    assert "v" * 8 not in sealed and sealed != sealer.seal("v" * 64, row=ROW)  # fresh nonce each time
    assert LoginSealer(key).open(sealed, row=ROW) == "v" * 64
    assert LoginSealer(decode_login_key(new_login_key())).open(sealed, row=ROW) is None
    later = row_digest(state_sha256="a" * 64, nonce="n", return_to="/review/analyses", expires_at=2e9)
    assert sealer.open(sealed, row=later) is None
    for broken in (sealed[:-1] + ("A" if sealed[-1] != "A" else "B"), sealed[:10], "%%%", ""):
        assert sealer.open(broken, row=ROW) is None
