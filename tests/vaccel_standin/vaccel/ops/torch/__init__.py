"""vaccel/ops/torch: Tensor and TensorType (libvaccel's VACCEL_TORCH_*)."""

import errno
from enum import IntEnum
from pathlib import Path

from ...error import FFIError
from ...resource import ResourceType

TensorType = IntEnum("TensorType", {"BYTE": 1, "CHAR": 2, "SHORT": 3, "INT": 4, "LONG": 5, "HALF": 6, "FLOAT": 7})


class Tensor:
    def __init__(self, dims, data_type, data):
        self.dims, self.data_type, self.data = list(dims), TensorType(data_type), list(data)


class TorchMixin:
    def torch_model_load(self, resource) -> None:
        self._op("torch", message="Torch model load failed")
        self._model(resource)

    def torch_model_run(self, resource, in_tensors, nr_out_tensors=1, run_options=None):
        self._op("torch", message="Torch model run failed")
        import torch

        model = self._model(resource)
        dtypes = {TensorType.FLOAT: torch.float32, TensorType.LONG: torch.int64, TensorType.INT: torch.int32}
        with torch.inference_mode():
            out = model(*[torch.tensor(t.data, dtype=dtypes[t.data_type]).reshape(t.dims) for t in in_tensors])
        outs = list(out) if isinstance(out, tuple | list) else [out]
        return [Tensor(list(o.shape), TensorType.FLOAT, o.flatten().tolist()) for o in outs[:nr_out_tensors]]

    def _model(self, resource):
        if resource._type != ResourceType.MODEL or not resource.is_registered(self):
            raise FFIError(errno.EINVAL, "Torch model load failed")
        import torch

        return torch.jit.load(str(Path(resource._paths[0])), map_location="cpu").eval()


