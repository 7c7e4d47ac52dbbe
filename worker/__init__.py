"""flexgc worker."""
