"""Files and schemas: the predictions schema, token shards, and the workdir (lock, atomic writes,
JSON)."""
