//! Kubernetes API stages (not yet implemented).
