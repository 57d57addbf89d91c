"""Small utilities shared by every part of the toolkit (EDM-compatible import path)."""

from .util import EasyDict, make_cache_dir_path
