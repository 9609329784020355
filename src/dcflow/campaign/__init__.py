"""Campaign-level state: the raw-file registry, sky map geometry, sharding and planning."""

__all__: list[str] = []
