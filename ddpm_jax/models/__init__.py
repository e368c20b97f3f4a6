"""Flax networks. They know nothing about noise schedules or losses."""
