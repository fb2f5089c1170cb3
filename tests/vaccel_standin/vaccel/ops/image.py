"""vaccel/ops/image.py: classify (the noop plugin's dummy answer)."""

NOOP_TAG, NOOP_IMAGE = "This is a dummy classification tag!", "This is a dummy imgname!"


class ImageMixin:
    def classify(self, image: bytes):
        self._op("noop", message="Image classification failed")
        return NOOP_TAG, NOOP_IMAGE

