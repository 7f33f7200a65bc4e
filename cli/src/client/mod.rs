//! The command-line client of any Comfy API v2 endpoint (filled in by the CLI issue).
