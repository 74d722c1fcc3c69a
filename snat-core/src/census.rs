//! Socket census of a network namespace (not yet implemented).
