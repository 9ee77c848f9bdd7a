"""Test-support helpers for pixelquery_batch (library code never imports this package)."""
