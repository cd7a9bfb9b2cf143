"""Card tokens at rest: sealed (encrypted) so the sweeper can re-drive an interrupted
attach, erased once the event is final. The plain token never touches the database.

The sealer holds one Fernet key per configured secret (`Settings.seal_secrets`: the
comma-separated PAYWORKER_SEAL_KEYS, else PAYWORKER_SEAL_KEY, else the Stripe key). The
first key seals; every key opens (cryptography's MultiFernet). Each Fernet key is derived
from its secret with HKDF, exactly as the single key of earlier releases was, so a token
sealed under the old secret (PAYWORKER_SEAL_KEY, or the Stripe key) still opens once that
secret is listed after the new one."""

from __future__ import annotations

import base64
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import PermanentError

# Fixed salt and context: the key depends only on the configured secret. Changing either
# would make every token sealed before unreadable.
_SALT = b"payworker/token-seal"
_INFO = b"v1"


def fernet_key(secret: str) -> bytes:
    """The Fernet key (URL-safe base64 of 32 bytes) that `secret` derives."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
        secret.encode()
    )
    return base64.urlsafe_b64encode(derived)


class TokenSealer:
    """Encrypts card tokens with the first secret's key; decrypts with any secret's."""

    def __init__(self, secrets: str | Sequence[str]) -> None:
        listed = [secrets] if isinstance(secrets, str) else list(secrets)
        if not listed or not all(listed):
            raise ValueError("a token sealer needs at least one non-empty secret")
        self._fernet = MultiFernet([Fernet(fernet_key(secret)) for secret in listed])

    def seal(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def unseal(self, sealed: str) -> str:
        """The token back. Raises PermanentError when no configured secret sealed it."""
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise PermanentError(
                "the sealed card token cannot be opened with any configured sealing key",
                code="token_unrecoverable",
            ) from None
