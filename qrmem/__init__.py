"""qrmem: conversational long-term memory. The library lives in `store`, `memory` and `agent`;
this package holds the command line."""

__version__ = "0.1.0"
