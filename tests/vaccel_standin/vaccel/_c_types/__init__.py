from .types import CAny, CType, to_ctype
from .wrappers import CBytes, CFloat, CInt, CList, CStr

__all__ = ["CAny", "CBytes", "CFloat", "CInt", "CList", "CStr", "CType", "to_ctype"]
