"""Chapters run at tiny scale under pytest (``pytest book --nbval-lax``) unless told otherwise."""

import os

os.environ.setdefault("STABILITYLAB_SCALE", "tiny")
os.environ.setdefault("MPLBACKEND", "Agg")
