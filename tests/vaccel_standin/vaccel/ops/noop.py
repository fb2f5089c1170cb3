"""vaccel/ops/noop.py"""


class NoopMixin:
    def noop(self) -> None:
        self._op("noop", message="NoOp operation failed")

