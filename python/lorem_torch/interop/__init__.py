"""Interoperability with other implementations (lorem-jax)."""
