"""Command-line tools that use the library and the experiment configs (paper tables)."""
