"""Database settings for the store; composed into the one Settings by cds/settings.py."""

from pydantic import BaseModel


class StoreConfig(BaseModel):
    database_url: str
    echo_sql: bool = False
