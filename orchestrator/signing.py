"""Job records the driver can prove it wrote: HMAC-SHA256 with a key kept outside every sweep.

A job folder's job.json carries the sha256 of each of its files; its `signature` field is the
HMAC-SHA256 of the record's canonical bytes (every other field, sorted keys, compact JSON) under
this user's key. Whoever can write a sweep folder but cannot read the key can neither plant a
result nor change one: resume, `sync` and `report` use signed records only (orchestrator.store).

The key: the file named by $CIRCUITRY_KEY_FILE, else ~/.config/circuitry/key; 32 random bytes
(hex), created on first use with mode 0600 (never through a link), refused when it is a link,
not a regular file, or readable by others. On a cluster the driver's key comes from a Secret
mounted as a file and named by CIRCUITRY_KEY_FILE (deploy/README.md).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

KEY_ENV = "CIRCUITRY_KEY_FILE"
SIGNATURE = "signature"  # the job.json field that holds it (not part of the signed bytes)


class SigningKeyError(ValueError):
    """The signing key cannot be used (a link, loose permissions, unreadable)."""


def key_path() -> Path:
    env = os.environ.get(KEY_ENV)
    return Path(env).expanduser() if env else Path.home() / ".config" / "circuitry" / "key"


_KEYS: dict[str, bytes] = {}


def signing_key() -> bytes:
    """This user's key (module doc), created on first use."""
    path = key_path()
    cached = _KEYS.get(str(path))
    if cached is not None:
        return cached
    fix = f"remove it or set {KEY_ENV} to a private key file"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise SigningKeyError(f"{path}: the signing key cannot be opened ({e.strerror}); {fix}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SigningKeyError(f"{path}: the signing key is not a regular file; {fix}")
        if st.st_mode & 0o077:
            raise SigningKeyError(f"{path}: the signing key is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                            f"run `chmod 600 {path}`")
        key = f.read().strip()
    if len(key) < 32:
        raise SigningKeyError(f"{path}: the signing key is shorter than 32 bytes; {fix}")
    _KEYS[str(path)] = key
    return key


def canonical(record: dict) -> bytes:
    """The bytes a signature covers: the record without its signature, sorted, compact."""
    body = {k: v for k, v in record.items() if k != SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign(record: dict) -> dict:
    """The record with its signature field set."""
    mac = hmac.new(signing_key(), canonical(record), hashlib.sha256).hexdigest()
    return {**record, SIGNATURE: mac}


def signed(record: dict) -> bool:
    """Whether the record carries a valid signature of this user's key."""
    mac = record.get(SIGNATURE)
    if not isinstance(mac, str):
        return False
    key = signing_key()  # outside the try: a key that cannot be used stops the command, it unsigns nothing
    try:
        body = canonical(record)
    except ValueError:  # a planted NaN
        return False
    want = hmac.new(key, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, want)
