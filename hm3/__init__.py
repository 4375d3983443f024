"""hm3: hierarchical multi-objective model merging."""
