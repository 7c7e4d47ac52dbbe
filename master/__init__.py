"""flexgc master."""
