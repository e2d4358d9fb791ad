"""Built-in attacks; each module registers its behaviours on import."""
