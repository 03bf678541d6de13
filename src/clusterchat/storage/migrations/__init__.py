"""Alembic migration scripts of the SQL schema (see docs/MIGRATIONS.md)."""
