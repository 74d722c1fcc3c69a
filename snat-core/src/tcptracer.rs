//! Reader for BCC tcptracer logs (not yet implemented).
