"""Adds FISHERTUNE to PEFT's closed ``PeftType`` enum so ``register_peft_method`` accepts it."""

from __future__ import annotations

from peft.utils.peft_types import PeftType

_NAME = "FISHERTUNE"


def _extend_peft_type() -> PeftType:
    if _NAME in PeftType.__members__:
        return PeftType[_NAME]
    # PeftType is a str-Enum without a public way to add members; build one the way EnumType does.
    member = str.__new__(PeftType, _NAME)
    member._name_ = _NAME
    member._value_ = _NAME
    member.__objclass__ = PeftType
    member.__init__(_NAME)
    PeftType._member_map_[_NAME] = member
    PeftType._value2member_map_[_NAME] = member
    PeftType._member_names_.append(_NAME)
    type.__setattr__(PeftType, _NAME, member)
    return member


FISHERTUNE_PEFT_TYPE = _extend_peft_type()
