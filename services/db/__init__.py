"""PostgreSQL through SQLAlchemy 2 + psycopg 3; schema managed by Alembic."""
