"""siot core."""
