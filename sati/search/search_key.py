"""The search key: the secret every MAC over a search's files is made with (``sati.search.signed_storage``).

A search's storage is shared: anyone who can write there could plant a pickle that ``--resume`` would
load. The driver signs what it writes with a key that does not live in that storage, and a restore
loads only what carries a valid MAC. The key is, in this order:

- ``$SATI_SEARCH_KEY``: at least 32 characters (``python -c "import secrets; print(secrets.token_hex(32))"``);
- the key file ``$XDG_CONFIG_HOME/sati/search.key`` (default ``~/.config/sati/search.key``), created on
  first use with 64 random hex digits, mode 0600, in a folder of mode 0700.

A key file owned by another user, or one that the group or others may read or write, is refused:
whoever reads the key can sign a pickle that a resume then runs. Only the process that writes or
reads Tune's experiment state needs the key: the ``sati`` driver, or with Ray Client (``ray://``) the
Tune driver that Ray runs on the head node, which finds it the same way but never creates one.
Trials never need it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

KEY_ENV = "SATI_SEARCH_KEY"
MIN_LENGTH = 32  # characters of the key (the key file holds 64 hex digits: 256 bits)
_DOMAIN = b"sati search storage MAC v1\0"


class SearchKeyError(ValueError):
    """No usable search key: too short, or a key file others can read or write."""


@dataclass(frozen=True)
class SearchKey:
    """An HMAC-SHA256 key and where it came from (``$SATI_SEARCH_KEY`` or the key file's path)."""

    secret: bytes = field(repr=False)
    source: str

    @property
    def id(self) -> str:
        """A fingerprint that names the key in messages without revealing it."""
        return hmac.new(self.secret, b"sati search key id", hashlib.sha256).hexdigest()[:12]

    def mac(self, name: str, data: bytes) -> str:
        """The MAC of ``data`` stored as ``name`` (its path below the search storage): a file is valid
        under its own name only."""
        return hmac.new(self.secret, _DOMAIN + name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def key_file() -> Path:
    """``$XDG_CONFIG_HOME/sati/search.key``, default ``~/.config/sati/search.key``."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "sati" / "search.key"


_active: SearchKey | None = None


def search_key() -> SearchKey:
    """The driver's key (module docstring), created on first use; this process signs and verifies
    with it from now on (``active_key``)."""
    global _active
    env = os.environ.get(KEY_ENV)
    _active = _from_env(env) if env is not None else _from_file(key_file(), create=True)
    return _active


def active_key(what: str) -> SearchKey:
    """The key this process loaded (``search_key``), else the one its environment or key file holds,
    never a new one: a ``SearchKeyError`` naming ``what`` needs it when there is none."""
    global _active
    if _active is None:
        env, path = os.environ.get(KEY_ENV), key_file()
        if env is None and not path.exists():
            raise SearchKeyError(
                f"{what}: no search key in this process (${KEY_ENV} unset, no {path}); with Ray Client "
                f"(ray://) the Tune driver on the head node needs the key the search is signed with"
            )
        _active = _from_env(env) if env is not None else _from_file(path, create=False)
    return _active


def _checked(text: str, source: str) -> SearchKey:
    text = text.strip()
    if len(text) < MIN_LENGTH:
        raise SearchKeyError(
            f"{source}: a search key needs at least {MIN_LENGTH} characters, this one has {len(text)} "
            '(make one with: python -c "import secrets; print(secrets.token_hex(32))")'
        )
    return SearchKey(text.encode(), source)


def _from_env(value: str) -> SearchKey:
    return _checked(value, f"${KEY_ENV}")


def _from_file(path: Path, create: bool) -> SearchKey:
    if create and not path.exists():
        _create(path)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SearchKeyError(
                f"{path}: the search key file must be yours and readable by you only (mode 600); it is "
                f"owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):03o}. Anyone who can read "
                f"or change it can make a resumed search load a pickle of theirs: chmod 600 {path} if only "
                "you could ever write it, else delete it (sati makes a new one; searches signed with the "
                "old key then cannot resume)"
            )
        with os.fdopen(fd, "r") as f:
            fd = -1
            return _checked(f.read(4096), str(path))
    finally:
        if fd >= 0:
            os.close(fd)


def _create(path: Path) -> None:
    """A new key file, mode 0600, written whole before it appears under its name (a second process
    creating it at the same time keeps the first one's)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made it meanwhile: theirs stays
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
