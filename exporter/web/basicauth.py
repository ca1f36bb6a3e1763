"""HTTP basic authentication against bcrypt hashes, with a cache of recent successes.

bcrypt is slow on purpose: tens of milliseconds of CPU per check at the usual cost of 10.
Prometheus sends the same credentials with every scrape, so a success is remembered under an
HMAC of the credentials keyed with random bytes that live only in this process. The cache never
holds a password, and what it holds cannot be tested against guesses outside this process.
"""

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping

import bcrypt

# Enough for every Prometheus replica and a few rotated passwords; the oldest entry goes first.
CACHE_SIZE = 256

# Compared against when the user is unknown, so an unknown user costs as much as a wrong
# password and response times do not tell which user names exist. Any cost-10 hash will do:
# this one is of a random string nobody knows.
_DUMMY_HASH = b"$2b$10$cCrbIpquE0k19mtOhnhCW.5cajHWncbnIuBPCLRAaJTCFvfFLbqO."


class BasicAuth:
    """Checks `Authorization: Basic ...` headers against `user: bcrypt hash` pairs."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        self._key = secrets.token_bytes(32)
        self._cache_lock = threading.Lock()
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        # One bcrypt computation at a time: a flood of wrong passwords can then burn one core
        # at most, and scrapes that arrive together with the same new credentials wait for
        # the first one's result instead of each paying for bcrypt.
        self._bcrypt_lock = threading.Lock()
        self.bcrypt_checks = 0  # how often bcrypt actually ran (the cache's hit rate)

    def allows(self, authorization: str | None) -> bool:
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        key = self._cache_key(user, password)
        if self._cached(key):
            return True
        with self._bcrypt_lock:
            if self._cached(key):  # checked by the scrape we waited for
                return True
            if not self._check(user, password):
                return False  # failures are never cached: each guess pays full price
            with self._cache_lock:
                self._verified[key] = None
                while len(self._verified) > CACHE_SIZE:
                    self._verified.popitem(last=False)
            return True

    def _check(self, user: str, password: str) -> bool:
        stored = self._users.get(user)
        self.bcrypt_checks += 1
        try:
            matches = bcrypt.checkpw(password.encode(), stored or _DUMMY_HASH)
        except ValueError:  # longer than bcrypt's 72 bytes: no hash can match it
            return False
        return matches and stored is not None

    def _cached(self, key: bytes) -> bool:
        with self._cache_lock:
            if key not in self._verified:
                return False
            self._verified.move_to_end(key)
            return True

    def _cache_key(self, user: str, password: str) -> bytes:
        name = user.encode()
        # The length prefix keeps ("a:b", "c") and ("a", "b:c")-style pairs apart.
        message = len(name).to_bytes(4, "big") + name + password.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()


def parse_basic(authorization: str | None) -> tuple[str, str] | None:
    """(user, password) from a basic Authorization header, or None when it is not one."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None
