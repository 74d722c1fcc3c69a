//! Process index from /proc (not yet implemented).
