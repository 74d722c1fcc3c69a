//! Azure Monitor SNAT metrics (not yet implemented).
