"""Moved to :mod:`sppnet.runtime` (``configure()``); these names work until sppnet 0.3.0."""

from . import runtime
from ._deprecated import moved


def __getattr__(name: str):
    return moved(__name__, name, {"sppnet.runtime": runtime})
