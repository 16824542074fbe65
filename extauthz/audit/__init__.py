"""The audit trail: hash chains, signed checkpoints, a durable spool, a central sink."""
