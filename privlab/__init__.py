"""privlab: a laboratory for privacy attacks and defenses in decentralized learning."""

from importlib import metadata

try:
    __version__ = metadata.version("privlab")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
