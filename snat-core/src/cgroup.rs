//! Container and pod identity from cgroup paths (not yet implemented).
