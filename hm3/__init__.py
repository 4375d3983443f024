"""hm3: hierarchical multi-objective model merging."""


def __getattr__(name: str):
    if name == "load_merged":
        from hm3.loading import load_merged

        return load_merged
    raise AttributeError(f"module 'hm3' has no attribute {name!r}")
