//! SNAT pressure and port allocation (not yet implemented).
