"""The `hm3` command line."""
