"""Model families: the registry (:mod:`.registry`) and the families that ship with untok.

Importing this package registers ``flat`` (including its MatMul-free backbone), ``blt``,
``tfree``, ``tokun`` and ``tokun-lm``; :func:`build_model` and :func:`load` build any
registered family.
"""

from __future__ import annotations

from untok.models.base import ByteLM
from untok.models.blt import BLT
from untok.models.flat import FlatLM
from untok.models.registry import (
    FAMILIES,
    Capabilities,
    Family,
    build_model,
    capabilities,
    family_of,
    load,
    register,
    require,
)
from untok.models.tfree import TFreeLM
from untok.models.tokun import TokunAutoencoder
from untok.models.tokun_lm import TokunLM

__all__ = ["BLT", "FAMILIES", "ByteLM", "Capabilities", "Family", "FlatLM", "TFreeLM",
           "TokunAutoencoder", "TokunLM",
           "build_model",
           "capabilities", "family_of", "load", "register", "require"]
