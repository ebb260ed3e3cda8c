"""Syncing ServiceTitan resources into the sync store."""
