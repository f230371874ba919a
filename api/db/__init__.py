"""The API's database: tables, engine set-up and migrations."""
