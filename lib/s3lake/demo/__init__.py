"""Local end-to-end demos of every job (`make demo`)."""
