"""The firmware author's tools."""
