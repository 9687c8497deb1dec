"""Shared library of the nli-qlora stages: each concept is defined once, here."""
