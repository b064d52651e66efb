"""Command-line tools over the core: tocpl-solve (solve), tocpl-demo (demo)."""
