"""Placeholder until this bench lands (this session)."""
