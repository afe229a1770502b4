"""Token counting and request estimation."""

__all__: list[str] = []
