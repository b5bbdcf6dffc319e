"""igsync's package metadata lives in pyproject.toml; this file stays for tools that call it."""

from setuptools import setup

setup()
