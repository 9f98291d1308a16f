"""Nested structures (lists, tuples, dicts, arrays as leaves), as the RNN wrapper's generic loop needs
for cells with nested inputs, outputs and states (the guide's NestedCell)."""


def is_nested(x):
    return isinstance(x, (list, tuple, dict))


def flatten(x):
    """Leaves in a fixed order (dicts by sorted key, as Keras/optree do)."""
    if isinstance(x, dict):
        return [leaf for k in sorted(x) for leaf in flatten(x[k])]
    if isinstance(x, (list, tuple)):
        return [leaf for item in x for leaf in flatten(item)]
    return [x]


def pack_as(structure, leaves):
    """Rebuild `structure`'s shape from a flat list of leaves."""
    it = iter(leaves)

    def build(s):
        if isinstance(s, dict):
            return {k: build(s[k]) for k in sorted(s)}
        if isinstance(s, tuple) and hasattr(s, "_fields"):  # namedtuple
            return type(s)(*(build(v) for v in s))
        if isinstance(s, (list, tuple)):
            return type(s)(build(v) for v in s)
        return next(it)

    out = build(structure)
    rest = list(it)
    if rest:
        raise ValueError(f"pack_as: {len(rest)} leaves left over for the structure {structure!r}")
    return out


def map_structure(fn, *structures):
    """fn applied leaf-wise over structures of the same shape."""
    flats = [flatten(s) for s in structures]
    if len({len(f) for f in flats}) > 1:
        raise ValueError(f"map_structure: structures have {[len(f) for f in flats]} leaves")
    return pack_as(structures[0], [fn(*leaves) for leaves in zip(*flats)])
