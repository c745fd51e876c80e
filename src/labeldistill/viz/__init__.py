"""viz layer: drawing (imports evaluation and data, never the other way)."""
