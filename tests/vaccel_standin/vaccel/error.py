"""vaccel/error.py: FFIError (code, message; `str` as `[errno N] NAME: message`)."""

import errno


class FFIError(RuntimeError):
    def __init__(self, error_code: int, message: str):
        self.code = error_code
        self.message = message

    def __str__(self):
        return f"[errno {self.code}] {errno.errorcode.get(self.code, '?')}: {self.message}"


class NullPointerError(RuntimeError):
    def __init__(self, context: str = "pointer"):
        super().__init__(f"Unexpected NULL pointer encountered in {context}")
