"""Threading policy (placeholder until measured)."""
