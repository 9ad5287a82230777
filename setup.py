# Metadata lives in pyproject.toml; this shim keeps `python setup.py develop` habits working.
from setuptools import setup

setup()
