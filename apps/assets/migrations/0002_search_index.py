"""Full-text search over assets: SQLite FTS5, or a GIN index under PostgreSQL."""

from django.db import migrations

SQLITE_UP = [
    "CREATE VIRTUAL TABLE assets_search USING fts5("
    "asset_id UNINDEXED, name, description, tags, meta, tokenize='unicode61 remove_diacritics 2')",
]
SQLITE_DOWN = ["DROP TABLE IF EXISTS assets_search"]
PG_UP = [
    "CREATE TABLE assets_search (asset_id uuid PRIMARY KEY REFERENCES assets_asset(id) "
    "ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED, document tsvector NOT NULL)",
    "CREATE INDEX assets_search_document ON assets_search USING gin (document)",
]
PG_DOWN = ["DROP TABLE IF EXISTS assets_search"]


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for sql in SQLITE_UP if vendor == "sqlite" else PG_UP if vendor == "postgresql" else []:
        schema_editor.execute(sql)


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    for sql in SQLITE_DOWN if vendor == "sqlite" else PG_DOWN if vendor == "postgresql" else []:
        schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [("assets", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
