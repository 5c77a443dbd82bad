"""Pipeline commands: poll, send, run, preview (registered on import)."""
