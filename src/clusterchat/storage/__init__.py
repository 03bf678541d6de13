import logging

# Alembic logs every plugin it sets up at import; schema.py says what it migrated.
logging.getLogger("alembic").setLevel(logging.WARNING)
