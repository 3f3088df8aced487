"""The fault suite's fixtures live in faultkit.py (importable by the tests, unlike a conftest)."""
from faultkit import disk_full, tiny  # noqa: F401 (fixtures)
