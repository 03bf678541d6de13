import logging

# Alembic logs every plugin it sets up at import; schema.py says what it migrated.
logging.getLogger("alembic").setLevel(logging.WARNING)


def _not_alembic_key_note(record: logging.LogRecord) -> bool:
    """asyncmy logs the server's notes as warnings; MariaDB notes that it
    ignores the name of alembic_version's primary key on every first
    ``db upgrade``, which told a newcomer nothing but "WARNING"."""
    return "ignored for PRIMARY key" not in record.getMessage()


logging.getLogger("asyncmy").addFilter(_not_alembic_key_note)
