"""Command-line interface of suitkit."""
