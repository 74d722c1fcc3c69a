//! Public-IP policy (not yet implemented).
