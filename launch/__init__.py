"""The `genlab` command line: config loading, validation and sub-commands."""
