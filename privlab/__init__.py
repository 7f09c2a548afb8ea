"""privlab: a laboratory for privacy attacks and defenses in decentralized learning."""

__version__ = "0.1.0"
