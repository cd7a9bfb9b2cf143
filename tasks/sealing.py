"""Card tokens at rest: sealed (encrypted) so the sweeper can re-drive an interrupted
attach, erased once the event is final. The plain token never touches the database."""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.errors import PermanentError

# Fixed salt and context: the key depends only on the configured secret.
_SALT = b"payworker/token-seal"
_INFO = b"v1"


class TokenSealer:
    """Encrypts and decrypts card tokens with a key derived from a secret."""

    def __init__(self, secret: str) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO).derive(
            secret.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def unseal(self, sealed: str) -> str:
        """The token back. Raises PermanentError when the secret changed since sealing."""
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise PermanentError(
                "the sealed card token cannot be opened with the current secret",
                code="token_unrecoverable",
            ) from None
