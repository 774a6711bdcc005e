"""KV memory split by head class: the pool, its sizing, the sink cache."""
