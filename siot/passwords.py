"""Password hashing for `user` nodes (DESIGN §10): argon2id, via argon2-cffi.

Parameters: memory 19 MiB, 2 passes, 1 lane — OWASP's recommended argon2id configuration. Why
these on a Raspberry Pi: memory is what makes argon2 expensive for an attacker's GPU, but every
login costs the daemon the same memory, and a Pi 4 with 1–2 GB shares it with SQLite and
nats-server; 19 MiB lets several logins run at once without pressure. One lane, because
argon2-cffi runs lanes as threads and a Pi has few cores that the event loop and the writer
thread need too. A hash takes ~50 ms on a desktop core and a few hundred ms on a Pi 4's; callers
on the event loop run it on a worker thread (`asyncio.to_thread`).

The parameters are stored in each hash (`$argon2id$v=19$m=19456,t=2,p=1$...`), so raising them
later does not invalidate stored hashes.
"""

from __future__ import annotations

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

MEMORY_KIB = 19 * 1024
TIME_COST = 2
PARALLELISM = 1
# A `passwordHash` written from outside (an import, a peer) is checked against these bounds:
# verifying a hash costs what its own parameters say, so a hash claiming 4 GiB would let one
# login attempt exhaust a Pi's memory.
MAX_MEMORY_KIB = 256 * 1024
MAX_TIME_COST = 16
MAX_PARALLELISM = 8
MAX_PASSWORD_BYTES = 4096  # argon2 takes any length; a bigger one is abuse, not a password

_hasher = PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_KIB, parallelism=PARALLELISM, type=Type.ID)


def hash_password(plain: str) -> str:
    """The argon2id hash of `plain` (with a random salt), in argon2's encoded form. Blocks for
    the hash's duration (see the module docstring). Raises ValueError for an empty or oversized
    password."""
    if not isinstance(plain, str) or not plain:
        raise ValueError("a password must be a non-empty string")
    if len(plain.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"a password must be at most {MAX_PASSWORD_BYTES} bytes")
    return _hasher.hash(plain)


def verify_password(password_hash: str, plain: str) -> bool:
    """Whether `plain` matches `password_hash`. False on a mismatch and on anything malformed (not
    a string, not an argon2 hash, parameters out of bounds); never raises for bad input. Costs
    what the hash's parameters say: run it off the event loop."""
    if not isinstance(plain, str) or not is_password_hash(password_hash):
        return False
    try:
        return _hasher.verify(password_hash, plain)
    except (VerificationError, InvalidHashError):
        return False


def is_password_hash(value: object) -> bool:
    """Whether `value` is an argon2id hash in encoded form with parameters within this module's
    bounds: what a `passwordHash` point may hold."""
    if not isinstance(value, str) or not value.startswith("$argon2id$"):
        return False
    try:
        params = extract_parameters(value)
    except (InvalidHashError, ValueError):
        return False
    return (
        params.memory_cost <= MAX_MEMORY_KIB
        and params.time_cost <= MAX_TIME_COST
        and params.parallelism <= MAX_PARALLELISM
    )
